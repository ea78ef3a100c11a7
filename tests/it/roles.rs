//! Two database roles (issue 21): the daemon's runtime role cannot erase or rewrite the
//! evidence, and the daemon refuses to start as any role that could.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::harness::TestDaemon;
use crate::helpers::{
    DaemonDir, TestDb, assert_contains, connect, query_pairs, query_value, run_cli,
};

const EVIDENCE: [&str; 3] = [
    "playbook_audit_log",
    "audit_checkpoints",
    "audit_cosignatures",
];

/// A daemon ran (as the runtime role) and stopped on `db`: audit rows and a shutdown
/// checkpoint exist.
async fn db_with_evidence() -> (std::sync::Arc<TestDb>, DaemonDir) {
    let running = TestDaemon::start("", &[], "bindings: []\n").await;
    let db = running.db.clone();
    // The suite's daemon is connected as the runtime role, and only as it: the refusals below
    // are what the daemon itself would get.
    let daemon_roles: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'playbookd%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(daemon_roles, vec![db.runtime.clone()]);
    running.stop().await;
    (db, DaemonDir::new())
}

async fn count(db: &TestDb, table: &str) -> i64 {
    query_value(
        &db.client().await,
        &format!("SELECT count(*) FROM {table}"),
        &[],
    )
    .await
}

/// Runs `sql` as the runtime role and returns the error PostgreSQL gave it (panics if it
/// succeeded).
async fn refused(client: &tokio_postgres::Client, sql: &str) -> tokio_postgres::Error {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("the runtime role was allowed: {sql}"),
        Err(error) => error,
    }
}

fn message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| error.to_string())
}

#[tokio::test]
async fn the_runtime_role_cannot_disable_triggers_grant_itself_delete_or_erase_evidence() {
    let (db, _dir) = db_with_evidence().await;
    let rows = count(&db, "playbook_audit_log").await;
    let checkpoints = count(&db, "audit_checkpoints").await;
    assert!(
        rows >= 2 && checkpoints >= 1,
        "{rows} rows, {checkpoints} checkpoints"
    );

    let runtime = connect(&db.runtime_config()).await;
    for table in EVIDENCE {
        // The attack of issue 21, step by step: each is refused by the privilege system
        // (not by the append-only triggers, which an owner could have disabled).
        for sql in [
            format!("ALTER TABLE {table} DISABLE TRIGGER ALL"),
            format!("ALTER TABLE {table} DISABLE TRIGGER USER"),
            format!("ALTER TABLE {table} OWNER TO {}", db.runtime),
            format!("DROP TABLE {table}"),
        ] {
            let error = refused(&runtime, &sql).await;
            assert_eq!(
                error.code(),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{sql}: {error}"
            );
            assert!(message(&error).contains("must be owner"), "{sql}: {error}");
        }
        for sql in [
            format!("DELETE FROM {table}"),
            // node_id: the column every evidence table has.
            format!("DELETE FROM {table} WHERE node_id <> ''"),
            format!("UPDATE {table} SET node_id = node_id"),
            format!("TRUNCATE {table}"),
            format!(
                "CREATE TRIGGER sneak BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION playbook_guard_transition()"
            ),
        ] {
            let error = refused(&runtime, &sql).await;
            assert_eq!(
                error.code(),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{sql}: {error}"
            );
            assert!(
                message(&error).contains("permission denied"),
                "refused by the privilege system, not a trigger: {sql}: {error}"
            );
        }
        // A GRANT by a role without the grant option is a warning that grants nothing.
        let _ = runtime
            .batch_execute(&format!(
                "GRANT DELETE, UPDATE, TRUNCATE, TRIGGER ON {table} TO {}",
                db.runtime
            ))
            .await;
        for privilege in ["DELETE", "UPDATE", "TRUNCATE", "TRIGGER"] {
            let has: bool = query_value(
                &runtime,
                "SELECT has_table_privilege(current_user, $1, $2)",
                &[&table, &privilege],
            )
            .await;
            assert!(
                !has,
                "the runtime role granted itself {privilege} on {table}"
            );
        }
    }
    // Nor can it become the owner.
    let error = refused(&runtime, &format!("SET ROLE {}", db.owner)).await;
    assert!(message(&error).contains("permission denied"), "{error}");

    assert_eq!(count(&db, "playbook_audit_log").await, rows);
    assert_eq!(count(&db, "audit_checkpoints").await, checkpoints);
}

/// Runs `playbookd serve` connecting with `url` and returns (exit code, stderr).
/// [`serve_as`], which must refuse to start (exit 78): its stderr.
fn refused_as(db: &TestDb, dir: &DaemonDir, url: &str) -> String {
    let (code, stderr) = serve_as(db, dir, url);
    assert_eq!(code, Some(78), "{stderr}");
    stderr
}

fn serve_as(db: &TestDb, dir: &DaemonDir, url: &str) -> (Option<i32>, String) {
    let config = dir.write_config(db, "node-a", "");
    let (status, _, stderr) = run_cli(
        &["serve", "--config", config.to_str().unwrap()],
        &[("PLAYBOOKD_DATABASE_URL", url)],
    );
    (status.code(), stderr)
}

#[tokio::test]
async fn the_daemon_refuses_to_start_as_a_superuser_with_the_fix_in_the_message() {
    let (db, dir) = db_with_evidence().await;
    let rows = count(&db, "playbook_audit_log").await;
    let stderr = refused_as(&db, &dir, &db.admin_url());
    assert_contains(&stderr, "refusing to run as database role `postgres`");
    assert_contains(&stderr, "it is a superuser");
    assert!(
        !stderr.contains("it owns"),
        "a superuser is told that, not each consequence: {stderr}"
    );
    assert_contains(&stderr, "playbookd migrate --runtime-role");
    // Nothing acted: not even a daemon.start row.
    assert_eq!(count(&db, "playbook_audit_log").await, rows);
}

#[tokio::test]
async fn the_daemon_refuses_to_start_as_the_owner_role_with_the_fix_in_the_message() {
    let (db, dir) = db_with_evidence().await;
    let rows = count(&db, "playbook_audit_log").await;
    let stderr = refused_as(&db, &dir, &db.owner_url());
    assert_contains(&stderr, &format!("database role `{}`", db.owner));
    let owned = stderr
        .split("it owns tables ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no `it owns tables` in {stderr}"));
    assert!(
        owned.contains("audit_checkpoints, ") && owned.contains("playbook_audit_log, "),
        "{stderr}"
    );
    assert_contains(&stderr, "it owns database");
    assert_contains(&stderr, "playbookd migrate --runtime-role");
    assert_eq!(count(&db, "playbook_audit_log").await, rows);
}

#[tokio::test]
async fn the_daemon_refuses_a_role_that_may_delete_evidence_through_a_membership() {
    let (db, dir) = db_with_evidence().await;
    let admin = db.client().await;
    // A role the runtime role is a member of without inheriting it (it may still SET ROLE).
    let cleaner = format!("{}_cleaner", db.name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {cleaner} NOLOGIN; GRANT DELETE ON audit_checkpoints TO {cleaner}; \
             GRANT UPDATE (event_type) ON playbook_audit_log TO {cleaner}; \
             GRANT {cleaner} TO {rt}; ALTER ROLE {rt} NOINHERIT",
            rt = db.runtime
        ))
        .await
        .unwrap();
    let (code, stderr) = serve_as(&db, &dir, &db.url());
    let cleanup = format!(
        "REVOKE ALL ON audit_checkpoints, playbook_audit_log FROM {cleaner}; \
         REVOKE UPDATE (event_type) ON playbook_audit_log FROM {cleaner}; DROP ROLE {cleaner}"
    );
    admin.batch_execute(&cleanup).await.unwrap();
    assert_eq!(code, Some(78), "{stderr}");
    assert_contains(
        &stderr,
        &format!("its role {cleaner} may DELETE on audit_checkpoints"),
    );
    assert!(
        stderr.contains(&format!(
            "its role {cleaner} may UPDATE on playbook_audit_log"
        )),
        "a column privilege counts too: {stderr}"
    );
    // Without that membership the same role starts.
    let (code, stderr) = {
        let config = dir.write_config(&db, "node-a", "");
        let mut daemon = crate::helpers::ChildDaemon::start(&config, &dir.path("ok.log"));
        daemon.wait_for_log("playbookd ready", Duration::from_secs(20));
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
        (status.code(), daemon.log_text())
    };
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn the_daemon_never_migrates_and_names_the_command_that_does() {
    let db = TestDb::empty().await;
    let dir = DaemonDir::new();
    let stderr = refused_as(&db, &dir, &db.url());
    assert_contains(&stderr, "no playbookd schema");
    assert_contains(&stderr, "playbookd migrate --runtime-role");
    let tables: i64 = query_value(
        &db.client().await,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        &[],
    )
    .await;
    assert_eq!(tables, 0, "serve created tables");
}

#[tokio::test]
async fn migrate_refuses_to_make_the_owner_or_a_superuser_the_runtime_role() {
    let db = TestDb::empty().await;
    let owner_url = db.owner_url();
    for (role, why) in [
        (db.owner.as_str(), "is the owner role"),
        ("postgres", "is the owner role"), // the superuser is a member of every role
    ] {
        let (status, _, stderr) = run_cli(
            &["migrate", "--runtime-role", role],
            &[("PLAYBOOKD_OWNER_DATABASE_URL", &owner_url)],
        );
        assert_eq!(status.code(), Some(78), "{role}: {stderr}");
        assert!(stderr.contains(why), "{role}: {stderr}");
    }
    let (status, _, stderr) = run_cli(
        &["migrate", "--runtime-role", "pbd_no_such_role"],
        &[("PLAYBOOKD_OWNER_DATABASE_URL", &owner_url)],
    );
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert_contains(&stderr, "CREATE ROLE pbd_no_such_role LOGIN");
}

#[tokio::test]
async fn audit_verify_works_as_a_read_only_role() {
    let (db, dir) = db_with_evidence().await;
    let reader = format!("{}_reader", db.name);
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {reader} LOGIN; GRANT SELECT ON playbook_audit_log, audit_checkpoints TO {reader}"
        ))
        .await
        .unwrap();
    let mut config = db.config.clone();
    config.user(&reader);
    let url = crate::helpers::url_of(&config);
    let config_path = dir.write_config(&db, "node-a", "");
    let (status, stdout, stderr) = run_cli(
        &["audit", "verify", "--config", config_path.to_str().unwrap()],
        &[("PLAYBOOKD_DATABASE_URL", &url)],
    );
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON playbook_audit_log, audit_checkpoints FROM {reader}; DROP ROLE {reader}"
        ))
        .await
        .unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_contains(&stdout, "node-a");
}

/// The upgrade README "Database roles" gives an operator of an install from before the two
/// roles, where the daemon's role owned the database and every table: refused at start until
/// the SQL and `migrate` are run, then it starts as the same role.
#[tokio::test]
async fn an_install_owned_by_the_daemons_role_is_refused_until_the_documented_upgrade() {
    let db = TestDb::empty().await;
    let admin_db = db.client().await;
    // The old layout: one role, owner of the database and of everything the migrations made.
    crate::helpers::connect(&crate::helpers::admin_config())
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} OWNER TO {}",
            db.name, db.runtime
        ))
        .await
        .unwrap();
    let mut old = connect(&db.runtime_config()).await;
    playbookd::store::migrate::migrate(&mut old).await.unwrap();
    drop(old);
    let dir = DaemonDir::new();
    let stderr = refused_as(&db, &dir, &db.url());
    assert_contains(&stderr, "it owns tables audit_checkpoints, ");

    // README: as a superuser, in the database (the owner role exists here already).
    admin_db
        .batch_execute(&format!("REASSIGN OWNED BY {} TO {}", db.runtime, db.owner))
        .await
        .unwrap();
    let (status, stdout, stderr) = run_cli(
        &[
            "migrate",
            "--owner-role",
            &db.owner,
            "--runtime-role",
            &db.runtime,
        ],
        &[("PLAYBOOKD_OWNER_DATABASE_URL", &db.admin_url())],
    );
    assert!(status.success(), "{stdout}\n{stderr}");

    let config = dir.write_config(&db, "node-a", "");
    let mut daemon = crate::helpers::ChildDaemon::start(&config, &dir.path("upgraded.log"));
    daemon.wait_for_log("playbookd ready", Duration::from_secs(20));
}

/// V9 made the grant list data (`playbookd_runtime_grants`); the runtime role still holds
/// exactly what V8's function granted: these table privileges, this one function, nothing else.
#[tokio::test]
async fn the_runtime_role_holds_exactly_the_listed_grants() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let tables: Vec<(String, String)> = query_pairs(
        &client,
        "SELECT table_name::text, privilege_type::text FROM information_schema.role_table_grants \
             WHERE grantee = $1 ORDER BY 1, 2",
        &[&db.runtime],
    )
    .await;
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut grant = |privileges: &[&str], tables: &[&str]| {
        for table in tables {
            for privilege in privileges {
                expected.push(((*table).to_owned(), (*privilege).to_owned()));
            }
        }
    };
    grant(
        &["INSERT", "SELECT"],
        &[
            "audit_checkpoints",
            "audit_cosignatures",
            "playbook_audit_log",
        ],
    );
    grant(
        &["INSERT", "SELECT"],
        &[
            "playbook_approvals",
            "playbook_nonces",
            "playbook_version_signatures",
            "playbook_versions",
        ],
    );
    grant(
        &["INSERT", "SELECT", "UPDATE"],
        &[
            "playbook_approval_gates",
            "playbook_executions",
            "playbook_nodes",
            "playbook_rollback_states",
            "playbook_safe_halt_state",
            "playbook_step_runs",
        ],
    );
    grant(&["SELECT"], &["refinery_schema_history"]);
    expected.sort();
    assert_eq!(tables, expected);
    let functions: Vec<String> = client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public' \
             WHERE has_function_privilege($1, p.oid, 'EXECUTE') \
               AND NOT has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1",
            &[&db.runtime],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(functions, vec!["playbook_prune_nonces(integer,integer)"]);
}
