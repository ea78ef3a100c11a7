//! The audit writer and chain verification against a real PostgreSQL.

use std::time::Duration;

use playbookd::store::StoreError;
use playbookd::store::audit::{self, Actor, AppendError, AuditEvent, AuditHandle};
use playbookd::store::verify::{Breach, verify_chain};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestDb;

async fn writer(db: &TestDb, node: &str) -> (AuditHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (handle, _task) = audit::start_writer(db.config.clone(), node.into(), shutdown.clone())
        .await
        .expect("start writer");
    (handle, shutdown)
}

async fn append_n(handle: &AuditHandle, n: usize) {
    for i in 0..n {
        handle
            .append(AuditEvent::new("test.event", Actor::System).with("i", i))
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn sixty_four_concurrent_writers_make_one_valid_chain() {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..20 {
                    let appended = handle
                        .append(
                            AuditEvent::new("test.event", Actor::Uid(w))
                                .with("writer", w)
                                .with("i", i),
                        )
                        .await
                        .expect("append");
                    seqs.push(appended.seq);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=1280).collect::<Vec<i64>>(),
        "every seq exactly once"
    );
    let report = verify_chain(&db.client().await, "n1").await.unwrap();
    assert_eq!(report.breach, None);
    assert_eq!(report.rows, 1280);
}

#[tokio::test]
async fn a_failed_effect_refuses_only_its_own_append() {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    let failing = handle.append_with(Box::new(|tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO no_such_table VALUES (1)", &[])
                .await
                .map_err(StoreError::Query)?;
            Ok(AuditEvent::new("never", Actor::System))
        })
    }));
    let fine = handle.append(AuditEvent::new("fine", Actor::System));
    let (failing, fine) = tokio::join!(failing, fine);
    assert!(
        matches!(failing, Err(AppendError::Effect(_))),
        "{failing:?}"
    );
    assert_eq!(
        fine.expect("the other append commits").event.event_type,
        "fine"
    );

    let client = db.client().await;
    let types: Vec<String> = client
        .query(
            "SELECT event_type FROM playbook_audit_log ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["fine"]);
    assert_eq!(verify_chain(&client, "n1").await.unwrap().breach, None);
}

#[tokio::test]
async fn update_delete_and_truncate_are_refused_even_for_the_owner() {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    append_n(&handle, 3).await;
    let client = db.client().await;
    for sql in [
        "UPDATE playbook_audit_log SET event_type = 'x' WHERE seq = 2",
        "DELETE FROM playbook_audit_log WHERE seq = 3",
        "TRUNCATE playbook_audit_log",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert!(
            error
                .as_db_error()
                .unwrap()
                .message()
                .contains("append-only"),
            "{sql}: {error}"
        );
    }
}

/// Runs `tamper` with the append-only trigger disabled (as the superuser the tests run as),
/// then verifies the chain.
async fn tampered(tamper: &str) -> (i64, Breach) {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    append_n(&handle, 10).await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; {tamper}; \
             ALTER TABLE playbook_audit_log ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
    let report = verify_chain(&client, "n1").await.unwrap();
    report.breach.expect("tampering must be detected")
}

#[tokio::test]
async fn verify_names_a_modified_row() {
    let breach = tampered(
        "UPDATE playbook_audit_log SET event_data = jsonb_set(event_data, '{i}', '99') WHERE seq = 4",
    )
    .await;
    assert_eq!(breach, (4, Breach::Modified));
}

#[tokio::test]
async fn verify_names_a_deleted_row() {
    let breach = tampered("DELETE FROM playbook_audit_log WHERE seq = 6").await;
    assert_eq!(breach, (7, Breach::Missing { expected: 6 }));
}

#[tokio::test]
async fn verify_names_an_inserted_row() {
    // Shift seq 5.. up by one and forge a row at 5 whose own hash is internally consistent.
    let breach = tampered(
        "UPDATE playbook_audit_log SET seq = seq + 100 WHERE seq >= 5; \
         UPDATE playbook_audit_log SET seq = seq - 99 WHERE seq >= 105; \
         INSERT INTO playbook_audit_log SELECT node_id, 5, prev_hash, hash, event_type, event_data, created_at \
         FROM playbook_audit_log WHERE seq = 4",
    )
    .await;
    assert_eq!(breach, (5, Breach::BrokenLink));
}

#[tokio::test]
async fn verify_names_reordered_rows() {
    let breach = tampered(
        "UPDATE playbook_audit_log SET seq = 1000 WHERE seq = 3; \
         UPDATE playbook_audit_log SET seq = 3 WHERE seq = 4; \
         UPDATE playbook_audit_log SET seq = 4 WHERE seq = 1000",
    )
    .await;
    assert_eq!(breach, (3, Breach::BrokenLink));
}

#[tokio::test]
async fn verify_detects_a_tail_cut_after_a_checkpoint() {
    let breach = tampered(
        "INSERT INTO audit_checkpoints (node_id, seq, hash, key_id, signature, created_at) \
         SELECT node_id, seq, hash, 'k', '\\x00', now() FROM playbook_audit_log WHERE seq = 9; \
         DELETE FROM playbook_audit_log WHERE seq >= 8",
    )
    .await;
    assert_eq!(
        breach,
        (
            8,
            Breach::Truncated {
                checkpoint_seq: 9,
                last_seq: 7
            }
        )
    );
}

#[tokio::test]
async fn a_killed_connection_refuses_the_append_then_recovers() {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    append_n(&handle, 2).await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Whatever the writer does next, an append either commits or says it did not: the caller
    // of a failed one must not act. The first append after the kill may reconnect and succeed;
    // what must never happen is an Ok without its row.
    let mut outcomes = Vec::new();
    for i in 0..3 {
        outcomes.push(
            handle
                .append(AuditEvent::new("after.kill", Actor::System).with("i", i))
                .await,
        );
    }
    let committed = outcomes.iter().filter(|o| o.is_ok()).count();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM playbook_audit_log WHERE event_type = 'after.kill'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, i64::try_from(committed).unwrap(), "{outcomes:?}");
    assert!(committed >= 1, "the writer never recovered: {outcomes:?}");
    assert!(handle.is_available());
    assert_eq!(verify_chain(&client, "n1").await.unwrap().breach, None);
}
