//! Signs 1,000 playbooks (Ed25519) in a temporary directory and times loading them: secure
//! open, signature check and parse for each. With `PLAYBOOKD_TEST_DATABASE_URL` set, also
//! times a full `Registry::load` (version check and audit) against a fresh database there.
//!
//! `cargo bench --bench registry` (target: under 1 s).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::path::Path;
use std::time::Instant;

use playbookd::actions::limits::ActionLimits;
use playbookd::config::ActionsConfig;
use playbookd::registry::secure_open::TrustedDir;
use playbookd::registry::signature::{self, Algorithm, Signer, TrustedKeys};
use playbookd::registry::{Registry, RegistryPaths, check_playbook_file};

const COUNT: usize = 1_000;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["playbooks", "trusted-keys", "keys"] {
        std::fs::create_dir(root.join(sub)).expect("mkdir");
    }
    let prefix = root.join("keys/author");
    Signer::keygen(Algorithm::Ed25519, &prefix).expect("keygen");
    std::fs::copy(
        root.join("keys/author.pub"),
        root.join("trusted-keys/author.pub"),
    )
    .expect("copy");
    let pem = std::fs::read_to_string(root.join("keys/author.key")).expect("read key");
    let signer = Signer::load(&pem, &prefix).expect("load key");

    for i in 0..COUNT {
        let text = format!(
            "id: bench-{i}\nversion: 1\nname: Benchmark playbook {i}\n\
             owners: {{technical: sec@example.org, operational: soc@example.org}}\n\
             steps:\n  - id: tell\n    action: notify\n    with: {{message: \"number {i}\"}}\n    rollback: none\n"
        );
        let path = root.join(format!("playbooks/bench-{i}.yaml"));
        std::fs::write(&path, &text).expect("write");
        std::fs::write(
            signature::with_suffix(&path, ".sig"),
            signer.sign(text.as_bytes()),
        )
        .expect("sign");
    }

    let started = Instant::now();
    let loaded = verify_and_parse_all(root);
    let elapsed = started.elapsed();
    assert_eq!(loaded, COUNT, "every benchmark playbook must load");
    println!(
        "verify + parse {COUNT} signed playbooks: {:.3} s ({:.1} µs each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / COUNT as f64
    );

    if let Ok(url) = std::env::var("PLAYBOOKD_TEST_DATABASE_URL") {
        with_database(root, &url);
    } else {
        println!("(set PLAYBOOKD_TEST_DATABASE_URL to also time a full load with the database)");
    }
}

fn verify_and_parse_all(root: &Path) -> usize {
    let (keys, refused) = TrustedKeys::load(&root.join("trusted-keys")).expect("trusted keys");
    let limits = ActionLimits::from_config(&ActionsConfig::default());
    assert!(refused.is_empty());
    let dir = TrustedDir::open(&root.join("playbooks")).expect("playbook dir");
    let mut loaded = 0;
    for entry in std::fs::read_dir(root.join("playbooks")).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            check_playbook_file(&keys, &limits, &dir, &path).expect("valid playbook");
            loaded += 1;
        }
    }
    loaded
}

fn with_database(root: &Path, url: &str) {
    let limits = ActionLimits::from_config(&ActionsConfig::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let admin: tokio_postgres::Config = url.parse().expect("database URL");
        let (client, connection) = admin.connect(tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        let name = format!("pbd_bench_{}", std::process::id());
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            client
                .batch_execute(&statement)
                .await
                .expect("create database");
        }
        let mut config = admin.clone();
        config.dbname(&name);
        let mut migrator = playbookd::store::connect_single(&config)
            .await
            .expect("connect");
        playbookd::store::migrate::migrate(&mut migrator)
            .await
            .expect("migrate");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (audit, task) =
            playbookd::store::audit::start_writer(config, "bench".into(), shutdown.clone())
                .await
                .expect("audit writer");
        let paths = RegistryPaths {
            playbooks: root.join("playbooks"),
            trusted_keys: root.join("trusted-keys"),
            bindings: root.join("bindings.yaml"),
        };
        for pass in [
            "first load (records every version)",
            "second load (all known)",
        ] {
            let started = Instant::now();
            let (_registry, summary) = Registry::load(
                paths.clone(),
                std::sync::Arc::new(limits.clone()),
                audit.clone(),
            )
            .await
            .expect("load");
            let elapsed = started.elapsed();
            assert_eq!(summary.loaded, COUNT);
            println!("Registry::load, {pass}: {:.3} s", elapsed.as_secs_f64());
        }
        shutdown.cancel();
        let _ = task.await;
        drop(migrator);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop database");
    });
}
