//! The read-only status API over real HTTP, against a real database filled with SQL fixtures.

use std::collections::HashSet;
use std::time::Duration;

use playbookd::cli::status::{Endpoint, HttpResponse, request};
use playbookd::status::{self, PlaybookSummary, RuntimeSnapshot, StatusAddr, StatusState};
use playbookd::store::Store;
use playbookd::store::audit::{self, Actor, AuditEvent, AuditHandle};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, configured, json_keys, run_cli,
};

const NODE: &str = "node-s";
const PLAYBOOK: &str = "contain-host";
/// Placed where a careless implementation could leak it.
const SECRET: &str = "hunter2-do-not-leak";

/// A status server on 127.0.0.1:0 over its own database.
struct Server {
    endpoint: Endpoint,
    db: TestDb,
    audit: AuditHandle,
    runtime: watch::Sender<RuntimeSnapshot>,
    shutdown: CancellationToken,
}

impl Server {
    async fn start() -> Server {
        Server::start_on(TestDb::new().await, "127.0.0.1:0").await
    }

    async fn start_on(db: TestDb, listen: &str) -> Server {
        // The pool connects with a password in its config: it must never come back out.
        let mut pg = db.config.clone();
        pg.password(SECRET);
        let store = Store::connect(&pg, 4, Duration::from_secs(5))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let (audit, _task) = audit::start_writer(pg, NODE.into(), shutdown.clone())
            .await
            .unwrap();
        let (runtime, receiver) = watch::channel(loaded_runtime());
        let listener = status::bind(&listen.parse().unwrap()).await.unwrap();
        let endpoint = Endpoint(listener.local_addr().unwrap());
        // This node is listed in /v1/nodes, as a daemon's first heartbeat would make it.
        playbookd::store::nodes::beat(
            &store,
            &playbookd::store::nodes::Heartbeat {
                node_id: NODE,
                version: "test",
                started_at: now(),
                head: audit.head(),
                freshness_seconds: 300,
            },
        )
        .await
        .unwrap();
        let state = StatusState::new(store, audit.clone(), receiver);
        tokio::spawn(status::serve(listener, state, shutdown.clone()));
        Server {
            endpoint,
            db,
            audit,
            runtime,
            shutdown,
        }
    }

    async fn call(&self, method: &str, path: &str) -> HttpResponse {
        request(&self.endpoint, method, path).await.unwrap()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.call("GET", path).await;
        let body = response
            .json()
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {:?}", response.body));
        (response.status, body)
    }

    fn url(&self) -> String {
        self.endpoint.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn loaded_runtime() -> RuntimeSnapshot {
    RuntimeSnapshot {
        registry_loaded: true,
        playbooks: vec![PlaybookSummary {
            id: PLAYBOOK.into(),
            version: 3,
            sha256_hex: hex::encode([7u8; 32]),
            signers: vec!["key-1".into()],
        }],
        bindings: 2,
        unresolved_bindings: Vec::new(),
        ..RuntimeSnapshot::default()
    }
}

// ---- SQL fixtures: what intake and the executor will write, inserted directly. ----

fn now() -> OffsetDateTime {
    playbookd::store::chain::now_micros()
}

async fn insert_version(client: &tokio_postgres::Client, id: &str, version: i64) {
    client
        .execute(
            "INSERT INTO playbook_versions (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
             VALUES ($1, $2, $3, ARRAY['key-1'], $4, now()) ON CONFLICT DO NOTHING",
            &[&id, &version, &vec![7u8; 32], &format!("content with {SECRET}").into_bytes()],
        )
        .await
        .unwrap();
}

async fn insert_execution(
    client: &tokio_postgres::Client,
    started_at: OffsetDateTime,
    state: &str,
    playbook: &str,
    org: &str,
) -> Uuid {
    let id = Uuid::new_v4();
    insert_version(client, playbook, 3).await;
    let completed = matches!(state, "completed" | "rolled_back").then_some(started_at);
    client
        .execute(
            "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
               playbook_sha256, state, current_step, step_results, nonce, policy_decision_id, policy, outcome, \
               org_id, severity, subject, requested_by_uid, started_at, updated_at, completed_at) \
             VALUES ($1, $2, $3, 3, $4, $5, 0, $6, $7, 'dec-1', 'ransomware.burst', 'contain', $8, 'high', \
               $9, 1000, $10, $10, $11)",
            &[
                &id,
                &NODE,
                &playbook,
                &vec![7u8; 32],
                &state,
                &json!({"internal": SECRET}),
                &format!("nonce-{id}"),
                &org,
                &json!({"pid": 4242, "path": "/tmp/x", "api_token": SECRET}),
                &started_at,
                &completed,
            ],
        )
        .await
        .unwrap();
    id
}

async fn insert_step(
    client: &tokio_postgres::Client,
    execution: Uuid,
    index: i32,
    state: &str,
    output: Value,
    error: Option<&str>,
) {
    let start = now();
    client
        .execute(
            "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, attempts, \
               idempotency_key, params_sha256, output, error_class, error, started_at, finished_at) \
             VALUES ($1, $2, $3, 'exec', $4, 2, $5, $6, $7, $8, $9, $10::timestamptz, $10::timestamptz + interval '1500 milliseconds')",
            &[
                &execution,
                &index,
                &format!("step-{index}"),
                &state,
                &vec![9u8; 32],
                &vec![1u8; 32],
                &output,
                &error.map(|_| "permanent"),
                &error,
                &start,
            ],
        )
        .await
        .unwrap();
}

pub(crate) async fn insert_halt(
    client: &tokio_postgres::Client,
    execution: Option<Uuid>,
    active: bool,
) {
    insert_halt_of(client, NODE, execution, active).await;
}

/// A SAFE-HALT row of `node` (a halt belongs to a node: the status API of another node
/// does not show it as active).
pub(crate) async fn insert_halt_of(
    client: &tokio_postgres::Client,
    node: &str,
    execution: Option<Uuid>,
    active: bool,
) {
    client
        .execute(
            "INSERT INTO playbook_safe_halt_state (is_active, node_id, execution_id, rollback_id, error_message, \
               entered_at, resolved_at, resolved_by, reason) \
             VALUES ($1, $2, $3, 'rb-1', 'undo of step 1 failed', now(), \
               CASE WHEN $1 THEN NULL ELSE now() END, CASE WHEN $1 THEN NULL ELSE 0 END, \
               CASE WHEN $1 THEN NULL ELSE 'fixed by hand' END)",
            &[&active, &node, &execution],
        )
        .await
        .unwrap();
}

/// Every GET path of the API, with a real execution id for the templated one.
fn concrete_paths(execution: Uuid) -> Vec<String> {
    status::routes::ROUTES
        .iter()
        .map(|route| match route.path {
            "/v1/nodes/{id}" => route.path.replace("{id}", NODE),
            "/v1/audit/{node}/{seq}/proof" => format!("/v1/audit/{NODE}/1/proof"),
            path => path.replace("{id}", &execution.to_string()),
        })
        .collect()
}

// ---- Tests ----

#[tokio::test]
async fn health_is_ready_with_counts_chain_head_version_and_uptime() {
    let server = Server::start().await;
    let client = server.db.client().await;
    insert_execution(&client, now(), "completed", PLAYBOOK, "acme").await;
    insert_execution(&client, now(), "running", PLAYBOOK, "acme").await;
    let appended = server
        .audit
        .append(AuditEvent::new("test.event", Actor::System))
        .await
        .unwrap();

    let (status, body) = server.get("/v1/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["executions"]["completed"], 1);
    assert_eq!(body["executions"]["running"], 1);
    assert_eq!(body["executions"]["safe_halted"], 0);
    assert_eq!(body["chain_head"]["node_id"], NODE);
    assert_eq!(body["chain_head"]["seq"], appended.seq);
    assert_eq!(body["chain_head"]["hash"], hex::encode(appended.hash));
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64());
    assert_eq!(body["playbooks"], 1);
    assert_eq!(body["bindings"], 2);
}

#[tokio::test]
async fn health_is_503_while_a_safe_halt_is_active() {
    let server = Server::start().await;
    let client = server.db.client().await;
    insert_halt(&client, None, false).await;
    assert_eq!(
        server.get("/v1/health").await.0,
        200,
        "a resolved halt does not block"
    );

    insert_halt(&client, None, true).await;
    let (status, body) = server.get("/v1/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["safe_halt_active"], true);
    assert_eq!(body["safe_halt"]["error_message"], "undo of step 1 failed");
    assert!(body["reasons"].to_string().contains("SAFE-HALT"), "{body}");
}

#[tokio::test]
async fn health_is_503_until_the_registry_is_loaded() {
    let server = Server::start().await;
    server.runtime.send_replace(RuntimeSnapshot::default());
    let (status, body) = server.get("/v1/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["registry_loaded"], false);
    assert!(body["reasons"].to_string().contains("registry"), "{body}");

    server.runtime.send_replace(loaded_runtime());
    assert_eq!(server.get("/v1/health").await.0, 200);
}

#[tokio::test]
async fn every_path_refuses_writes_with_405_json_and_allow() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "completed", PLAYBOOK, "acme").await;
    for path in concrete_paths(id) {
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let response = server.call(method, &path).await;
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(
                response.header("allow"),
                Some("GET, HEAD"),
                "{method} {path}"
            );
            let body = response.json().unwrap();
            assert_eq!(body["error"], "method_not_allowed", "{method} {path}");
            assert!(body["detail"].is_string());
        }
    }
}

/// Appends `rows` events and signs a checkpoint over them with a fresh node key in `dir`;
/// returns the key.
async fn checkpointed(
    server: &Server,
    rows: usize,
    dir: &std::path::Path,
) -> playbookd::store::checkpoint::NodeKey {
    use playbookd::store::checkpoint::{Checkpointer, NodeKey};
    for i in 0..rows {
        server
            .audit
            .append(AuditEvent::new("test.event", Actor::System).with("i", i))
            .await
            .unwrap();
    }
    let store = Store::connect(&server.db.config, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let key_path = dir.join("node.key");
    let key = NodeKey::load_or_generate(&key_path).unwrap();
    let checkpointer = Checkpointer::new(server.audit.clone(), store, std::sync::Arc::new(key));
    let _: playbookd::store::checkpoint::Checkpoint = checkpointer
        .checkpoint()
        .await
        .unwrap()
        .expect("a checkpoint");
    NodeKey::load(&key_path).unwrap()
}

#[tokio::test]
async fn checkpoint_and_proof_routes_serve_the_stored_note_and_proofs_tlog_tiles_accepts() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    let server = Server::start().await;
    let (status, body) = server.get("/v1/checkpoint").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, _) = server.get(&format!("/v1/audit/{NODE}/1/proof")).await;
    assert_eq!(status, 404);

    let dir = tempfile::tempdir().unwrap();
    let key = checkpointed(&server, 7, dir.path()).await;
    server
        .audit
        .append(AuditEvent::new("test.after", Actor::System))
        .await
        .unwrap();
    let client = server.db.client().await;
    let stored: String = client
        .query_one(
            "SELECT note FROM audit_checkpoints WHERE node_id = $1 AND seq = 7",
            &[&NODE],
        )
        .await
        .unwrap()
        .get(0);
    for path in [
        "/v1/checkpoint".to_owned(),
        format!("/v1/checkpoint?node={NODE}"),
        format!("/v1/checkpoint?node={NODE}&size=7"),
    ] {
        let response = server.call("GET", &path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            String::from_utf8(response.body.clone()).unwrap(),
            stored,
            "{path}"
        );
    }
    let origin = format!("playbookd/{NODE}");
    let vkey = signed_note::new_ed25519_verifier_key(&origin, &key.verifying_key());
    let verifiers = signed_note::VerifierList::new(vec![Box::new(
        signed_note::StandardVerifier::new(&vkey).unwrap(),
    )]);
    let note = signed_note::Note::from_bytes(stored.as_bytes()).unwrap();
    note.verify(&verifiers)
        .expect("signed_note verifies the served note");
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    assert_eq!(checkpoint.size(), 7);
    let root = *checkpoint.hash();

    let (status, body) = server
        .get(&format!("/v1/checkpoint?node={NODE}&size=3"))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get("/v1/checkpoint?node=no%20such").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("`node`"),
        "{body}"
    );
    let (status, body) = server.get("/v1/checkpoint?node=other-node").await;
    assert_eq!(status, 404, "{body}");

    for seq in 1..=7u64 {
        let (status, body) = server.get(&format!("/v1/audit/{NODE}/{seq}/proof")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checkpoint"], stored.as_str());
        assert_eq!(
            (body["tree_size"].as_u64(), body["leaf_index"].as_u64()),
            (Some(7), Some(seq - 1))
        );
        let db_hash: Vec<u8> = client
            .query_one(
                "SELECT hash FROM playbook_audit_log WHERE node_id = $1 AND seq = $2",
                &[&NODE, &i64::try_from(seq).unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(body["hash"], hex::encode(&db_hash));
        let proof: Vec<tlog_tiles::Hash> = crate::helpers::tlog_hashes(&body["inclusion_proof"]);
        let leaf = tlog_tiles::record_hash(&db_hash);
        assert_eq!(body["leaf_hash"], BASE64.encode(leaf.0));
        tlog_tiles::check_record(&proof, 7, root, seq - 1, leaf)
            .unwrap_or_else(|e| panic!("tlog_tiles rejects the proof of seq {seq}: {e:?}"));
    }
    let (status, body) = server.get(&format!("/v1/audit/{NODE}/8/proof")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("beyond its newest checkpoint (size 7)"),
        "{body}"
    );
    for bad in ["0", "x", "-1"] {
        let (status, body) = server.get(&format!("/v1/audit/{NODE}/{bad}/proof")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A stored hash rewritten under the signed note: no proof is handed out.
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             UPDATE playbook_audit_log SET hash = sha256(hash) WHERE node_id = '{NODE}' AND seq = 3; \
             ALTER TABLE playbook_audit_log ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
    let (status, body) = server.get(&format!("/v1/audit/{NODE}/5/proof")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("evidence_mismatch")),
        "{body}"
    );
}

#[tokio::test]
async fn head_answers_every_path_without_a_body() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "completed", PLAYBOOK, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    checkpointed(&server, 1, dir.path()).await;
    for path in concrete_paths(id) {
        let response = server.call("HEAD", &path).await;
        assert_eq!(response.status, 200, "HEAD {path}");
        assert!(response.body.is_empty(), "HEAD {path} sent a body");
        assert!(response.header("content-type").is_some(), "HEAD {path}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let server = Server::start().await;
    for path in [
        "/",
        "/v1",
        "/v2/health",
        "/v1/executions/a/b",
        "/v1/health/x",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"], "not_found", "{path}");
    }
    let (status, body) = server
        .get(&format!("/v1/executions/{}", Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}

/// A state this version does not know (a newer schema, or a row altered behind the daemon's back)
/// is never shown as some default: the API answers 500 `corrupt_row`, as its document says.
#[tokio::test]
async fn a_row_with_an_unknown_state_is_500_corrupt_row_not_a_guess() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "running", PLAYBOOK, "org-a").await;
    // As the database's superuser: the CHECK constraint and the transition trigger are what
    // normally keep such a value out.
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_executions DROP CONSTRAINT playbook_executions_state_check; \
             SET session_replication_role = replica; \
             UPDATE playbook_executions SET state = 'paused_by_a_newer_version' WHERE execution_id = '{id}'"
        ))
        .await
        .unwrap();
    for path in ["/v1/executions".to_owned(), format!("/v1/executions/{id}")] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 500, "{path}: {body}");
        assert_eq!(body["error"], "corrupt_row", "{path}: {body}");
        assert_contains(body["detail"].as_str().unwrap(), "see the log");
    }
}

#[tokio::test]
async fn bad_query_parameters_are_400_naming_the_parameter() {
    let server = Server::start().await;
    for (path, param) in [
        ("/v1/executions?limit=0", "limit"),
        ("/v1/executions?limit=501", "limit"),
        ("/v1/executions?limit=ten", "limit"),
        ("/v1/executions?state=exploded", "state"),
        ("/v1/executions?playbook=Bad_Id", "playbook"),
        ("/v1/executions?since=yesterday", "since"),
        ("/v1/executions?until=2026-13-01T00:00:00Z", "until"),
        ("/v1/executions?cursor=abc", "cursor"),
        ("/v1/executions?limit=5&limit=6", "limit"),
        ("/v1/executions?colour=red", "colour"),
        ("/v1/audit?after=-1", "after"),
        ("/v1/audit?limit=100000", "limit"),
        ("/v1/executions/not-a-uuid", "id"),
        // Empty values are not "absent": the document types every parameter.
        ("/v1/executions?since=", "since"),
        ("/v1/executions?until=", "until"),
        ("/v1/executions?cursor=", "cursor"),
        ("/v1/executions?org=", "org"),
        ("/v1/audit?after=", "after"),
        // A NUL byte never reaches PostgreSQL (which would refuse it: a 503).
        ("/v1/executions?org=acme%00", "org"),
        ("/v1/executions?playbook=%00", "playbook"),
        ("/v1/executions?cursor=%00", "cursor"),
        ("/v1/executions?state=%00", "state"),
        ("/v1/executions?since=%00", "since"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("`{param}`")), "{path}: {detail}");
    }
}

#[tokio::test]
async fn executions_filter_by_state_playbook_org_and_time() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let base = now();
    let old = insert_execution(
        &client,
        base - time::Duration::hours(2),
        "completed",
        PLAYBOOK,
        "acme",
    )
    .await;
    let other_org = insert_execution(
        &client,
        base - time::Duration::hours(1),
        "completed",
        PLAYBOOK,
        "globex",
    )
    .await;
    let running = insert_execution(&client, base, "running", "block-ip", "acme").await;

    let ids = |body: &Value| -> Vec<String> {
        body["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["execution_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = server.get("/v1/executions").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), [running, other_org, old].map(|u| u.to_string()));
    assert_eq!(body["next_cursor"], Value::Null);
    let first = &body["executions"][0];
    assert_eq!(first["playbook"]["id"], "block-ip");
    assert_eq!(first["playbook"]["version"], 3);
    assert_eq!(first["playbook"]["sha256"], hex::encode([7u8; 32]));
    assert_eq!(first["org_id"], "acme");
    assert!(
        first.get("subject").is_none(),
        "the list carries no subject"
    );

    let (_, body) = server.get("/v1/executions?state=running").await;
    assert_eq!(ids(&body), [running.to_string()]);
    let (_, body) = server
        .get(&format!("/v1/executions?playbook={PLAYBOOK}"))
        .await;
    assert_eq!(ids(&body), [other_org, old].map(|u| u.to_string()));
    let (_, body) = server.get("/v1/executions?org=globex").await;
    assert_eq!(ids(&body), [other_org.to_string()]);
    let since = audit::format_timestamp(base - time::Duration::minutes(90));
    let until = audit::format_timestamp(base);
    let (_, body) = server
        .get(&format!("/v1/executions?since={since}&until={until}"))
        .await;
    assert_eq!(
        ids(&body),
        [other_org.to_string()],
        "since inclusive, until exclusive"
    );
}

#[tokio::test]
async fn pagination_is_stable_while_newer_rows_are_inserted() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let base = now() - time::Duration::hours(1);
    let mut existing = HashSet::new();
    for i in 0..120 {
        // Pairs share a started_at, so the execution_id tie-break is exercised.
        let at = base - time::Duration::seconds(i / 2);
        existing.insert(
            insert_execution(&client, at, "completed", PLAYBOOK, "acme")
                .await
                .to_string(),
        );
    }

    let writer_db = server.db.client().await;
    let stop = CancellationToken::new();
    let inserter = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut inserted = 0;
            while !stop.is_cancelled() {
                insert_execution(&writer_db, now(), "running", PLAYBOOK, "acme").await;
                inserted += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            inserted
        }
    });

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/executions?limit=7&cursor={c}"),
            None => "/v1/executions?limit=7".to_owned(),
        };
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for e in body["executions"].as_array().unwrap() {
            seen.push(e["execution_id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    stop.cancel();
    let inserted = inserter.await.unwrap();
    assert!(
        inserted > 0 && pages > 10,
        "inserted {inserted} during {pages} pages"
    );

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row appeared twice");
    let missing: Vec<&String> = existing.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "rows that existed at the start were skipped: {missing:?}"
    );
}

#[tokio::test]
async fn execution_shows_pinned_version_steps_approvals_rollback_and_audit() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "rolled_back", PLAYBOOK, "acme").await;
    insert_step(
        &client,
        id,
        0,
        "rolled_back",
        json!({"exit_code": 0, "stdout": "ok"}),
        None,
    )
    .await;
    insert_step(
        &client,
        id,
        1,
        "failed",
        json!({"stdout": "x".repeat(10_000)}),
        Some("exit status 3"),
    )
    .await;
    client
        .execute(
            "INSERT INTO playbook_approval_gates (execution_id, step_index, risk, required, state, context, \
               opened_at, expires_at, resolved_at) \
             VALUES ($1, 1, 'critical', 2, 'approved', '{\"step\": \"step-1\"}', now(), now() + interval '1 hour', now())",
            &[&id],
        )
        .await
        .unwrap();
    for uid in [1001i64, 1002] {
        client
            .execute(
                "INSERT INTO playbook_approvals (execution_id, step_index, approver_uid, verdict, reason, created_at) \
                 VALUES ($1, 1, $2, 'approve', 'looks right', now())",
                &[&id, &uid],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, started_at, finished_at) \
             VALUES ($1, 0, 'succeeded', 1, now(), now())",
            &[&id],
        )
        .await
        .unwrap();
    let started = server
        .audit
        .append(AuditEvent::new("execution.started", Actor::System).execution(id))
        .await
        .unwrap();
    server
        .audit
        .append(AuditEvent::new("execution.other", Actor::System).execution(Uuid::new_v4()))
        .await
        .unwrap();
    let ended = server
        .audit
        .append(AuditEvent::new("execution.rolled_back", Actor::System).execution(id))
        .await
        .unwrap();

    let (status, body) = server.get(&format!("/v1/executions/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["execution_id"], id.to_string());
    assert_eq!(
        body["playbook"],
        json!({"id": PLAYBOOK, "version": 3, "sha256": hex::encode([7u8; 32])})
    );
    assert_eq!(body["state"], "rolled_back");
    assert_eq!(body["subject"]["pid"], 4242);
    assert_eq!(body["org_id"], "acme");
    let steps = body["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["output"]["stdout"], "ok");
    assert_eq!(steps[0]["attempts"], 2);
    assert_eq!(steps[0]["duration_ms"], 1500);
    assert_eq!(steps[1]["error"], "exit status 3");
    assert_eq!(steps[1]["error_class"], "permanent");
    assert_eq!(
        steps[1]["output"]["truncated"], true,
        "large output is bounded"
    );
    let gate = &body["approvals"][0];
    assert_eq!(gate["risk"], "critical");
    assert_eq!(gate["votes"].as_array().unwrap().len(), 2);
    assert_eq!(gate["votes"][0]["approver_uid"], 1001);
    assert_eq!(body["rollback"][0]["state"], "succeeded");
    let seqs: Vec<i64> = body["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [started.seq, ended.seq]);
}

#[tokio::test]
async fn safe_halt_route_shows_the_active_halt_and_history() {
    let server = Server::start().await;
    let (status, body) = server.get("/v1/safe-halt").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"active": null, "history": []}));

    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "safe_halted", PLAYBOOK, "acme").await;
    insert_halt(&client, None, false).await;
    insert_halt(&client, Some(id), true).await;
    let (_, body) = server.get("/v1/safe-halt").await;
    assert_eq!(body["active"]["execution_id"], id.to_string());
    assert_eq!(body["active"]["is_active"], true);
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().any(|h| h["reason"] == "fixed by hand"));
}

#[tokio::test]
async fn audit_route_pages_through_this_nodes_chain() {
    let server = Server::start().await;
    let mut appended = Vec::new();
    for i in 0..5 {
        appended.push(
            server
                .audit
                .append(AuditEvent::new("test.event", Actor::System).with("i", i))
                .await
                .unwrap(),
        );
    }
    let (status, body) = server.get("/v1/audit?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(body["node_id"], NODE);
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["seq"], appended[0].seq);
    assert_eq!(rows[0]["prev_hash"], hex::encode([0u8; 32]));
    assert_eq!(rows[1]["prev_hash"], rows[0]["hash"]);
    assert_eq!(rows[2]["hash"], hex::encode(appended[2].hash));
    assert_eq!(body["next_after"], appended[2].seq);

    let (_, body) = server
        .get(&format!("/v1/audit?after={}", appended[2].seq))
        .await;
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["event_data"]["i"], 4);
    assert_eq!(body["next_after"], Value::Null);
}

#[tokio::test]
async fn playbooks_route_shows_active_and_known_versions() {
    let server = Server::start().await;
    let client = server.db.client().await;
    insert_version(&client, PLAYBOOK, 2).await;
    insert_version(&client, PLAYBOOK, 3).await;
    let (status, body) = server.get("/v1/playbooks").await;
    assert_eq!(status, 200);
    assert_eq!(body["registry_loaded"], true);
    assert_eq!(body["bindings"], 2);
    assert_eq!(body["active"][0]["id"], PLAYBOOK);
    assert_eq!(body["active"][0]["version"], 3);
    let versions: Vec<i64> = body["known_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2]);
    assert!(
        body.to_string().find("content").is_none(),
        "playbook bytes are not served"
    );
}

#[tokio::test]
async fn metrics_pass_promtool_after_every_metric_is_emitted() {
    use playbookd::status::metrics as m;
    let server = Server::start().await;
    metrics::counter!(m::DECISIONS_TOTAL, "status" => "rejected", "reason" => "stale").increment(1);
    metrics::counter!(m::EXECUTIONS_TOTAL, "state" => "completed", "playbook" => PLAYBOOK)
        .increment(1);
    metrics::histogram!(m::STEP_DURATION_SECONDS, "action" => "exec").record(0.25);
    metrics::counter!(m::STEP_RETRIES_TOTAL, "action" => "exec").increment(2);
    metrics::gauge!(m::APPROVALS_PENDING).set(1.0);
    // APPROVAL_WAIT_SECONDS is left to real gates (control.rs checks that it is recorded).
    metrics::gauge!(m::SAFE_HALT_ACTIVE).set(0.0);
    metrics::counter!(m::AUDIT_APPENDS_TOTAL).increment(3);
    metrics::histogram!(m::AUDIT_APPEND_SECONDS).record(0.002);
    metrics::counter!(m::REGISTRY_REJECTIONS_TOTAL, "reason" => "untrusted_signature").increment(1);
    metrics::gauge!(m::HTTP_CIRCUIT_OPEN, "host" => "hooks.example.org").set(1.0);
    metrics::counter!(m::DECISIONS_SUPPRESSED_TOTAL).increment(1);

    let response = server.call("GET", "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(response.body).unwrap();
    for name in m::ALL {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} not described:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE playbookd_step_duration_seconds histogram"),
        "histograms, not summaries:\n{text}"
    );

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian package `prometheus`; scripts/lib/install-test-tools.sh installs it)",
        );
    use tokio::io::AsyncWriteExt;
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().await.unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn openapi_documents_every_route_and_only_those() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.yaml"))
            .unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = json_keys(&doc["paths"]);
    let served: std::collections::BTreeSet<&str> =
        status::routes::ROUTES.iter().map(|r| r.path).collect();
    assert_eq!(documented, served);
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(methods, ["get"], "{path} documents only GET");
        assert!(
            item["get"]["responses"]["200"].is_object(),
            "{path} has no 200 response"
        );
    }
    // Every $ref points at something that exists.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 10);
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {reference}");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    out.push(value.as_str().unwrap().to_owned());
                } else {
                    collect_refs(value, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn no_response_leaks_a_secret() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "completed", PLAYBOOK, "acme").await;
    insert_step(
        &client,
        id,
        0,
        "succeeded",
        json!({"status": 200, "headers": {"Authorization": format!("Bearer {SECRET}")}, "webhook_secret": SECRET}),
        None,
    )
    .await;
    let mut paths = concrete_paths(id);
    paths.push("/nope".into());
    paths.push(format!("/v1/executions?cursor={SECRET}"));
    for path in paths {
        for method in ["GET", "POST"] {
            let response = server.call(method, &path).await;
            let text = String::from_utf8_lossy(&response.body);
            assert!(
                !text.contains(SECRET),
                "{method} {path} leaked the secret:\n{text}"
            );
            assert!(
                !text.contains("postgres://"),
                "{method} {path} leaked a URL:\n{text}"
            );
        }
    }
    let (_, body) = server.get(&format!("/v1/executions/{id}")).await;
    assert_eq!(
        body["steps"][0]["output"]["status"], 200,
        "non-secret output is kept"
    );
}

#[tokio::test]
async fn unix_socket_listener_serves_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("status.sock");
    let server = Server::start_on(TestDb::new().await, &format!("unix:{}", socket.display())).await;
    let (status, body) = server.get("/v1/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.url(), format!("unix:{}", socket.display()));
}

#[tokio::test]
async fn status_cli_prints_tables_and_json() {
    let server = Server::start().await;
    let client = server.db.client().await;
    let id = insert_execution(&client, now(), "rolled_back", PLAYBOOK, "acme").await;
    insert_step(&client, id, 0, "failed", json!({}), Some("exit status 3")).await;
    insert_halt(&client, Some(id), false).await;
    server
        .audit
        .append(AuditEvent::new("execution.started", Actor::System).execution(id))
        .await
        .unwrap();
    let url = server.url();
    let id_text = id.to_string();
    let cli = |args: Vec<&str>| {
        let url = url.clone();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut full: Vec<&str> = vec!["status", "--url", &url];
                full.extend(args.iter().map(String::as_str));
                run_cli(&full, &[])
            })
            .await
            .unwrap()
        }
    };

    let (status, stdout, stderr) = cli(vec![]).await;
    assert!(status.success(), "{stderr}");
    assert_contains(&stdout, "ready: yes");
    assert_contains(&stdout, "rolled_back 1");

    let (status, stdout, stderr) = cli(vec!["executions", "--state", "rolled_back"]).await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("EXECUTION"), "{stdout}");
    assert_contains(&stdout, &id_text);
    assert_contains(&stdout, "contain-host@3");

    let (status, stdout, stderr) = cli(vec!["executions", "--json"]).await;
    assert!(status.success(), "{stderr}");
    let body: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["executions"][0]["execution_id"], id_text);

    let (status, stdout, stderr) = cli(vec!["execution", &id_text]).await;
    assert!(status.success(), "{stderr}");
    assert_contains(&stdout, "step-0");
    assert_contains(&stdout, "exit status 3");

    let (status, stdout, _) = cli(vec!["halt"]).await;
    assert!(status.success());
    assert_contains(&stdout, "no active SAFE-HALT");
    assert_contains(&stdout, "fixed by hand");

    let (status, stdout, _) = cli(vec!["audit"]).await;
    assert!(status.success());
    assert_contains(&stdout, "execution.started");

    let (status, _, stderr) = cli(vec!["executions", "--state", "bogus"]).await;
    assert_eq!(status.code(), Some(1));
    assert_contains(&stderr, "400");
    assert_contains(&stderr, "`state`");

    server.runtime.send_replace(RuntimeSnapshot::default());
    let (status, stdout, _) = cli(vec![]).await;
    assert_eq!(status.code(), Some(1), "not ready is a failure for scripts");
    assert_contains(&stdout, "ready: NO");
}

#[tokio::test]
async fn daemon_serves_status_and_never_echoes_its_database_password() {
    let (db, _dir, config) = configured("node-d", "").await;
    // Same server and database, now with a password in the URL (trust auth ignores it).
    let text = std::fs::read_to_string(&config).unwrap();
    let with_password = text.replacen(
        &format!("postgres://{}@", db.runtime),
        &format!("postgres://{}:{SECRET}@", db.runtime),
        1,
    );
    assert_ne!(text, with_password, "the config must carry the password");
    std::fs::write(&config, with_password).unwrap();

    let daemon = ChildDaemon::serve(&config);
    let endpoint = daemon.status_endpoint();
    let id = Uuid::new_v4();
    for path in concrete_paths(id) {
        let response = request(&endpoint, "GET", &path).await.unwrap();
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            !body.contains(SECRET),
            "GET {path} leaked the password:\n{body}"
        );
    }
    // Registry loaded, database reachable, no SAFE-HALT: ready.
    let health = request(&endpoint, "GET", "/v1/health").await.unwrap();
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );
    assert_eq!(health.json().unwrap()["checks"]["database"], true);
    assert!(
        !daemon.log_text().contains(SECRET),
        "the log leaked the password"
    );
}

/// Raises this process's open-file limit (soft, and hard when allowed) to at least `want`.
fn raise_open_files(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= want {
        return;
    }
    let hard = hard.max(want);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard.min(want), hard))
        .unwrap_or_else(|e| panic!("cannot raise RLIMIT_NOFILE to {want}: {e}"));
}

/// Connections this process holds open on the server side of `port` (local port `port`, not
/// the listener): TCP sockets in `/proc/net/tcp*` whose inode is one of this process's file
/// descriptors. Other tests running in this process do not count.
fn server_side_connections(port: u16) -> usize {
    let inodes: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            let listening = *state == "0A";
            if local_port == Some(port)
                && !listening
                && inode
                    .parse::<u64>()
                    .is_ok_and(|inode| inodes.contains(&inode))
            {
                count += 1;
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_leave_health_answering_within_a_second() {
    const IDLE: usize = 5_000;
    raise_open_files(4 * IDLE as u64);
    let server = Server::start().await;
    let Endpoint(StatusAddr::Tcp(address)) = server.endpoint.clone() else {
        panic!("the test server listens on TCP");
    };
    let mut held = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // One in ten is a slow-header client: a request line, never the end of its headers.
        if index % 10 == 0 {
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        held.push(stream);
    }
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let (status, body) = server.get("/v1/health").await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        eprintln!("/v1/health with {IDLE} idle connections open: {status} in {took:?}");
        assert!(took < Duration::from_secs(1), "health took {took:?}");
    }
    // This process holds the 5,000 client ends; the server's ends stay within its cap, which
    // is far below what was opened.
    const { assert!(status::MAX_CONNECTIONS * 4 <= IDLE) };
    let server_side = server_side_connections(address.port());
    eprintln!("server side holds {server_side} connections");
    assert!(
        server_side <= status::MAX_CONNECTIONS + 32,
        "the status listener holds {server_side} descriptors beyond the clients'"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start().await;
    let Endpoint(StatusAddr::Tcp(address)) = server.endpoint.clone() else {
        panic!("the test server listens on TCP");
    };
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // A byte every half second does not extend the deadline: it covers the whole header.
    let mut closed = false;
    while started.elapsed() < status::HEADER_TIMEOUT + Duration::from_secs(3) {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buffer = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= status::HEADER_TIMEOUT - Duration::from_millis(600));
}

#[tokio::test]
async fn a_fresh_daemon_shows_every_metric_at_zero() {
    use playbookd::status::metrics as m;
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    dir.write_signed("playbooks/noop-3.yaml", crate::harness::NOOP_3, false);
    let config = dir.write_config(
        &db,
        "node-m",
        "[actions.http]\nallowed_hosts = [\"hooks.example.org\"]\n",
    );
    // A process of its own: nothing emitted before, whatever other tests did.
    let daemon = ChildDaemon::serve(&config);
    let response = request(&daemon.status_endpoint(), "GET", "/metrics")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let text = String::from_utf8(response.body).unwrap();
    let sample = |prefix: &str| {
        text.lines()
            .find(|line| !line.starts_with('#') && line.starts_with(prefix))
            .map(|line| line.rsplit(' ').next().unwrap().to_owned())
    };
    for name in m::ALL {
        assert!(
            sample(name).is_some(),
            "{name} has no series on a fresh daemon:\n{text}"
        );
    }
    for (series, value) in [
        ("playbookd_safe_halt_active ", "0"),
        ("playbookd_approvals_pending ", "0"),
        ("playbookd_bindings_without_active_playbook ", "0"),
        (
            "playbookd_registry_rejections_total{reason=\"command_not_allowed\"} ",
            "0",
        ),
        ("playbookd_decisions_suppressed_total ", "0"),
        (
            "playbookd_http_circuit_open{host=\"hooks.example.org\"} ",
            "0",
        ),
        (
            "playbookd_executions_total{state=\"completed\",playbook=\"noop-3\"} ",
            "0",
        ),
        (
            "playbookd_step_duration_seconds_count{action=\"exec\"} ",
            "0",
        ),
    ] {
        assert_eq!(sample(series).as_deref(), Some(value), "{series}\n{text}");
    }
    // The bindings file is missing: counted at start, not lost before the recorder existed.
    assert_eq!(
        sample("playbookd_registry_rejections_total{reason=\"missing\"} ").as_deref(),
        Some("1"),
        "{text}"
    );
}
