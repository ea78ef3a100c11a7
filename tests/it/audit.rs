//! The audit writer and chain verification against a real PostgreSQL.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use playbookd::store::audit::{self, Actor, AppendError, AuditEvent, AuditHandle, Scope};
use playbookd::store::checkpoint::{Checkpointer, NodeKey};
use playbookd::store::verify::{Breach, verify_chain};
use playbookd::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, audit_cli, chain_head, configured,
    count_events, query_column, serve_fresh, serve_refused,
};

/// Verifies `node`'s chain, which must hold no breach: how many rows it checked.
async fn intact_rows(client: &tokio_postgres::Client, node: &str) -> u64 {
    let report = verify_chain(client, node).await.unwrap();
    assert_eq!(report.breach, None, "{report:?}");
    report.rows
}

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

/// A client of `db` with a table `scratch (columns)` for effects to write, and a writer for
/// node `n1`.
async fn scratch_writer(
    db: &TestDb,
    columns: &str,
) -> (tokio_postgres::Client, AuditHandle, CancellationToken) {
    let client = db.client().await;
    client
        .batch_execute(&format!("CREATE TABLE scratch ({columns})"))
        .await
        .unwrap();
    let (handle, stop) = writer(db, "n1").await;
    (client, handle, stop)
}

/// The event types in the audit log, in chain order.
async fn logged_event_types(client: &tokio_postgres::Client) -> Vec<String> {
    query_column(
        client,
        "SELECT event_type FROM playbook_audit_log ORDER BY seq",
        &[],
    )
    .await
}

/// What a test effect returns to refuse its append `k` after it wrote.
fn refused_after_writing(k: i32) -> StoreError {
    StoreError::Corrupt {
        what: "test effect",
        detail: format!("refused {k}"),
    }
}

/// An append that holds the writer in its batch for 0.3 s, so that the appends sent meanwhile
/// queue up and are written as one batch.
pub(crate) async fn hold_writer(
    handle: &AuditHandle,
) -> Result<(audit::Appended, ()), AppendError> {
    handle
        .append_with(Box::new(|tx| {
            Box::pin(async move {
                tx.execute("SELECT pg_sleep(0.3)", &[])
                    .await
                    .map_err(StoreError::Query)?;
                Ok((AuditEvent::new("blocker", Actor::System), ()))
            })
        }))
        .await
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
    assert_eq!(intact_rows(&db.client().await, "n1").await, 1280);
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
            Ok((AuditEvent::new("never", Actor::System), ()))
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
    let types = logged_event_types(&client).await;
    assert_eq!(types, ["fine"]);
    intact_rows(&client, "n1").await;
}

/// One batch mixing effects that commit, an effect the database refuses (the transaction is
/// aborted until its savepoint is rolled back) and an effect that fails after it wrote: only
/// the failing callers are refused, their writes are gone, every other append commits.
#[tokio::test]
async fn failing_effects_in_one_batch_lose_none_of_the_other_appends() {
    let db = TestDb::new().await;
    let (client, handle, _stop) = scratch_writer(&db, "k int PRIMARY KEY").await;

    // Holds the writer in its first batch so that the 60 appends below queue up and are
    // written as one batch.
    let blocker = hold_writer(&handle);
    let appends = (0..60i32).map(|k| {
        let handle = handle.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            handle
                .append_with(Box::new(move |tx| {
                    Box::pin(async move {
                        tx.execute("INSERT INTO scratch VALUES ($1)", &[&k])
                            .await
                            .map_err(StoreError::Query)?;
                        if k % 7 == 3 {
                            // Refused by the database after the row above was written.
                            tx.execute("INSERT INTO scratch VALUES ($1)", &[&k])
                                .await
                                .map_err(StoreError::Query)?;
                        }
                        if k % 5 == 4 {
                            // Refused by the effect itself, after it wrote.
                            return Err(refused_after_writing(k));
                        }
                        Ok((AuditEvent::new("written", Actor::System).with("k", k), k))
                    })
                }))
                .await
        }
    });
    let (blocker, outcomes) = tokio::join!(blocker, futures::future::join_all(appends));
    let blocker = blocker.expect("blocker").0;

    let refused = |k: i32| k % 7 == 3 || k % 5 == 4;
    let mut expected_rows = Vec::new();
    let mut batch_seqs = Vec::new();
    for (k, outcome) in (0..60).zip(outcomes) {
        if refused(k) {
            assert!(
                matches!(outcome, Err(AppendError::Effect(_))),
                "{k}: {outcome:?}"
            );
        } else {
            let (appended, value) = outcome.unwrap_or_else(|e| panic!("{k}: {e:?}"));
            assert_eq!(value, k);
            assert_eq!(appended.event.data["k"], k);
            batch_seqs.push(appended.seq);
            expected_rows.push(k);
        }
    }
    assert!(expected_rows.len() > 30 && expected_rows.len() < 60);
    batch_seqs.sort_unstable();
    let first = blocker.seq + 1;
    assert_eq!(
        batch_seqs,
        (first..first + batch_seqs.len() as i64).collect::<Vec<_>>(),
        "the committed appends follow the blocker without a gap"
    );
    let rows: Vec<i32> = query_column(&client, "SELECT k FROM scratch ORDER BY k", &[]).await;
    assert_eq!(
        rows, expected_rows,
        "a refused effect's writes are rolled back"
    );
    let events = count_events(&client, "written").await;
    assert_eq!(events, expected_rows.len() as i64);
    intact_rows(&client, "n1").await;
}

/// The pipelined batch (issue #16): requests of different runs run side by side without
/// savepoints, requests of one run one after another, a global request alone. Each effect
/// records what it saw (how many rows of its run, or of all runs, were there before it): read
/// back in chain order, that must be exactly what running the committed requests one by one in
/// chain order would have seen. With `fail`, some effects fail (in the database, or in Rust
/// after they wrote): the batch is rolled back and written again with savepoints, so only those
/// callers are refused and none of their writes stands.
async fn one_batch_is_a_serial_order(fail: bool) {
    let db = TestDb::new().await;
    let (client, handle, _stop) = scratch_writer(&db, "k int PRIMARY KEY, run int NOT NULL").await;
    let runs: Vec<uuid::Uuid> = (0..5).map(|_| uuid::Uuid::new_v4()).collect();
    let blocker = hold_writer(&handle);
    let refused = move |k: i32| fail && (k % 7 == 3 || k % 11 == 4);
    let appends = (0..60i32).map(|k| {
        let handle = handle.clone();
        let run = k % 5;
        let scope = if k % 10 == 9 {
            Scope::Global
        } else {
            Scope::Execution(runs[usize::try_from(run).unwrap()])
        };
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let effect: audit::Effect<()> = Box::new(move |tx| {
                Box::pin(async move {
                    if scope == Scope::Global {
                        let all: i64 = tx
                            .query_one("SELECT count(*) FROM scratch", &[])
                            .await
                            .map_err(StoreError::Query)?
                            .get(0);
                        return Ok((
                            AuditEvent::new("global", Actor::System).with("saw", all),
                            (),
                        ));
                    }
                    let before: i64 = tx
                        .query_one("SELECT count(*) FROM scratch WHERE run = $1", &[&run])
                        .await
                        .map_err(StoreError::Query)?
                        .get(0);
                    tx.execute("INSERT INTO scratch VALUES ($1, $2)", &[&k, &run])
                        .await
                        .map_err(StoreError::Query)?;
                    if fail && k % 7 == 3 {
                        // Refused by the database after the row above was written.
                        tx.execute("INSERT INTO scratch VALUES ($1, $2)", &[&k, &run])
                            .await
                            .map_err(StoreError::Query)?;
                    }
                    if fail && k % 11 == 4 {
                        return Err(refused_after_writing(k));
                    }
                    let event = AuditEvent::new("written", Actor::System)
                        .with("k", k)
                        .with("run", run)
                        .with("saw", before);
                    Ok((event, ()))
                })
            });
            handle.append_in(scope, effect).await
        }
    });
    let (blocker, outcomes) = tokio::join!(blocker, futures::future::join_all(appends));
    let blocker = blocker.expect("blocker").0;
    let mut expected_rows = Vec::new();
    for (k, outcome) in (0..60).zip(outcomes) {
        if refused(k) && k % 10 != 9 {
            assert!(
                matches!(outcome, Err(AppendError::Effect(_))),
                "{k}: {outcome:?}"
            );
        } else {
            let (appended, ()) = outcome.unwrap_or_else(|e| panic!("{k}: {e:?}"));
            assert!(appended.seq > blocker.seq);
            if k % 10 != 9 {
                expected_rows.push(k);
            }
        }
    }
    let rows: Vec<i32> = query_column(&client, "SELECT k FROM scratch ORDER BY k", &[]).await;
    assert_eq!(rows, expected_rows, "exactly the committed effects' writes");
    let events: Vec<serde_json::Value> = query_column(
        &client,
        "SELECT jsonb_build_object('type', event_type, 'data', event_data) \
         FROM playbook_audit_log WHERE event_type IN ('written', 'global') ORDER BY seq",
        &[],
    )
    .await;
    assert_eq!(
        events.len(),
        60 - (0..60).filter(|&k| refused(k) && k % 10 != 9).count()
    );
    let mut per_run = [0i64; 5];
    for event in &events {
        let saw = event["data"]["saw"].as_i64().unwrap();
        if event["type"] == "global" {
            assert_eq!(saw, per_run.iter().sum::<i64>(), "{events:?}");
        } else {
            let run = usize::try_from(event["data"]["run"].as_u64().unwrap()).unwrap();
            assert_eq!(saw, per_run[run], "{events:?}");
            per_run[run] += 1;
        }
    }
    assert_eq!(verify_chain(&client, "n1").await.unwrap().breach, None);
}

#[tokio::test]
async fn a_pipelined_batch_equals_a_serial_order_of_its_requests() {
    one_batch_is_a_serial_order(false).await;
}

#[tokio::test]
async fn a_failed_effect_in_a_pipelined_batch_rolls_back_and_refuses_only_its_caller() {
    one_batch_is_a_serial_order(true).await;
}

/// A SAFE-HALT refusal in a pipelined batch sends the whole batch to the savepoint path: read
/// side by side, a halt seen by a later statement could be chained before a start that an
/// earlier statement let through (a step shown started after a refusal, no clear between).
/// The refused effect runs twice: once pipelined (rolled back), once one by one.
#[tokio::test]
async fn a_halt_refusal_in_a_pipelined_batch_is_written_one_by_one() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (handle, _stop) = writer(&db, "n1").await;
    let runs: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
    let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..8).map(|_| AtomicUsize::new(0)).collect());
    let blocker = hold_writer(&handle);
    let appends = (0..8usize).map(|k| {
        let (handle, calls, run) = (handle.clone(), calls.clone(), runs[k % 4]);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let effect: audit::Effect<()> = Box::new(move |_tx| {
                let calls = calls.clone();
                Box::pin(async move {
                    calls[k].fetch_add(1, AtomicOrdering::SeqCst);
                    let event = AuditEvent::new("step.started", Actor::System).execution(run);
                    let event = if k == 5 {
                        event.refused_by_halt()
                    } else {
                        event
                    };
                    Ok((event, ()))
                })
            });
            handle.append_in(Scope::Execution(run), effect).await
        }
    });
    let (blocker, outcomes) = tokio::join!(blocker, futures::future::join_all(appends));
    blocker.expect("blocker");
    for outcome in outcomes {
        outcome.expect("every request commits");
    }
    let ran: Vec<usize> = calls
        .iter()
        .map(|c| c.load(AtomicOrdering::SeqCst))
        .collect();
    // The refused effect ran pipelined, then again one by one; effects the rolled-back attempt
    // had not reached ran once, one by one.
    assert_eq!(ran[5], 2, "{ran:?}");
    assert!(ran.iter().all(|&n| (1..=2).contains(&n)), "{ran:?}");
    assert_eq!(verify_chain(&client, "n1").await.unwrap().breach, None);
}

/// Issue #16: the jobs of one request (a step's end and the next start) run side by side, their
/// first statements sent in one flight, and the outcome is that of running them one after
/// another: each sees what the jobs before it wrote. A job that sends a statement after a later
/// job's is out of order (it might see that job's writes): the request is written again the
/// savepoint way. A job refused after its writes takes the later jobs' writes with it.
#[tokio::test]
async fn the_jobs_of_one_request_reach_the_database_in_order() {
    let db = TestDb::new().await;
    let (client, handle, _stop) = scratch_writer(&db, "k int PRIMARY KEY").await;
    let run = Scope::Execution(uuid::Uuid::new_v4());
    let log = JobLog::default();

    // Four jobs of one statement: all started before the first one's statement came back, each
    // run once (no second attempt).
    let before = (0..3).map(|k| handle.defer_in(run, log.job(k, false, false)));
    handle
        .append_after_in(run, before.collect(), log.job(3, false, false))
        .await
        .expect("the request commits");
    let entries = log.take();
    assert_eq!(
        entries[..4],
        ["start 0", "start 1", "start 2", "start 3"],
        "{entries:?}"
    );
    assert_eq!(entries.len(), 8, "{entries:?}");

    // Job 10's second statement would follow job 11's insert: written again one by one.
    let first = handle.defer_in(run, log.job(10, true, false));
    handle
        .append_after_in(run, vec![first], log.job(11, false, false))
        .await
        .expect("the request commits");
    let entries = log.take();
    let starts = entries.iter().filter(|e| *e == "start 10").count();
    assert_eq!(starts, 2, "{entries:?}");

    // Job 20 is refused after its insert; job 21 ran beside it, but nothing of either stands.
    let first = handle.defer_in(run, log.job(20, false, true));
    let outcome = handle
        .append_after_in(run, vec![first], log.job(21, false, false))
        .await;
    assert!(
        matches!(outcome, Err(AppendError::Effect(_))),
        "{outcome:?}"
    );
    let entries = log.take();
    let starts = entries.iter().filter(|e| *e == "start 21").count();
    assert_eq!(starts, 1, "{entries:?}");

    // A lone job refused after its insert is refused once: nothing to write again.
    let outcome = handle.append_in(run, log.job(30, false, true)).await;
    assert!(
        matches!(outcome, Err(AppendError::Effect(_))),
        "{outcome:?}"
    );
    assert_eq!(log.take(), ["start 30", "end 30"]);

    let rows: Vec<i32> = query_column(&client, "SELECT k FROM scratch ORDER BY k", &[]).await;
    assert_eq!(rows, [0, 1, 2, 3, 10, 11]);
    let events: Vec<serde_json::Value> = query_column(
        &client,
        "SELECT event_data - 'actor' FROM playbook_audit_log WHERE event_type = 'written' ORDER BY seq",
        &[],
    )
    .await;
    let expected = serde_json::json!([
        {"k": 0, "saw": 0}, {"k": 1, "saw": 1}, {"k": 2, "saw": 2}, {"k": 3, "saw": 3},
        {"k": 10, "saw": 4, "after": 5}, {"k": 11, "saw": 5},
    ]);
    assert_eq!(serde_json::Value::from(events), expected);
    intact_rows(&client, "n1").await;
}

/// Effects for [`the_jobs_of_one_request_reach_the_database_in_order`], logging when each starts
/// and ends.
#[derive(Clone, Default)]
struct JobLog(Arc<std::sync::Mutex<Vec<String>>>);

impl JobLog {
    /// Inserts `k` into `scratch`, recording how many rows it saw before (and, with
    /// `count_again`, after, in a second statement); with `refuse`, fails after writing.
    fn job(&self, k: i32, count_again: bool, refuse: bool) -> audit::Effect<()> {
        let log = self.clone();
        Box::new(move |tx| {
            let log = log.clone();
            Box::pin(async move {
                log.push(format!("start {k}"));
                let saw: i64 = tx
                    .query_one(
                        "INSERT INTO scratch VALUES ($1) RETURNING (SELECT count(*) FROM scratch)",
                        &[&k],
                    )
                    .await
                    .map_err(StoreError::Query)?
                    .get(0);
                let mut event = AuditEvent::new("written", Actor::System)
                    .with("k", k)
                    .with("saw", saw);
                if count_again {
                    let after: i64 = tx
                        .query_one("SELECT count(*) FROM scratch", &[])
                        .await
                        .map_err(StoreError::Query)?
                        .get(0);
                    event = event.with("after", after);
                }
                log.push(format!("end {k}"));
                if refuse {
                    return Err(refused_after_writing(k));
                }
                Ok((event, ()))
            })
        })
    }

    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn hostile_bytes_in_an_event_are_stored_escaped_beside_their_neighbours() {
    let db = TestDb::new().await;
    let (handle, _stop) = writer(&db, "n1").await;
    let hostile_output = String::from_utf8_lossy(b"out\0put\x1b[2J\xff").into_owned();
    let hostile = handle.append_with(Box::new(move |_tx| {
        let hostile_output = hostile_output.clone();
        Box::pin(async move {
            let event = AuditEvent::new("test.hostile", Actor::Uid(1000))
                .with("\u{0}", 1)
                .with("output", hostile_output)
                .with("nested", serde_json::json!({"k\u{0}": ["\u{202e}x"]}));
            Ok((event, 42_u32))
        })
    }));
    let before = handle.append(AuditEvent::new("fine.before", Actor::System));
    let after = handle.append(AuditEvent::new("fine.after", Actor::System));
    let (hostile, before, after) = tokio::join!(hostile, before, after);
    let (appended, value) = hostile.expect("content never fails an append");
    assert_eq!(value, 42, "the effect's typed result reaches the caller");
    before.expect("neighbour commits");
    after.expect("neighbour commits");

    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT event_data FROM playbook_audit_log WHERE node_id = 'n1' AND seq = $1",
            &[&appended.seq],
        )
        .await
        .unwrap();
    let data: serde_json::Value = row.get(0);
    assert_eq!(data["output"], "out\\u{0}put\\u{1b}[2J\u{fffd}");
    assert_eq!(data["\\u{0}"], 1);
    assert_eq!(data["nested"]["k\\u{0}"][0], "\\u{202e}x");
    assert_eq!(intact_rows(&client, "n1").await, 3);
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

/// Issue #16: while a batch commits, the writer runs the next batch's effects on its second
/// connection, chained on the committing batch's rows: only requests that cannot see what the
/// committing batch changed (other executions, nothing global), and the next batch commits only
/// after it. A deferred trigger makes the first batch's COMMIT take 0.3 s; the effects report
/// whether they saw its row. `fail` makes that COMMIT fail instead: the batch written meanwhile
/// fails with it, nothing of either is recorded, and the writer goes on.
async fn a_batch_written_while_another_commits(fail: bool) {
    let db = TestDb::new().await;
    let client = db.client().await;
    let at_commit = if fail {
        "RAISE EXCEPTION 'refused at commit'"
    } else {
        "PERFORM pg_sleep(0.3)"
    };
    client
        .batch_execute(&format!(
            "CREATE FUNCTION test_at_commit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN {at_commit}; RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER test_at_commit AFTER INSERT ON playbook_audit_log \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
                 WHEN (NEW.event_type = 'test.slow_commit') EXECUTE FUNCTION test_at_commit()"
        ))
        .await
        .unwrap();
    let (handle, _stop) = writer(&db, "n1").await;
    let first = uuid::Uuid::new_v4();
    // Its effect takes 0.15 s: the requests below queue up meanwhile, for the next batch.
    let slow_effect: audit::Effect<i32> = Box::new(move |tx| {
        Box::pin(async move {
            tx.execute("SELECT pg_sleep(0.15)", &[])
                .await
                .map_err(StoreError::Query)?;
            Ok((
                AuditEvent::new("test.slow_commit", Actor::System).execution(first),
                0,
            ))
        })
    });
    let slow = handle.append_in(Scope::Execution(first), slow_effect);
    // Whether the slow batch's row was visible to each effect: 8 other runs, then the slow
    // one's run again, then a global request.
    let sees_slow_row = |scope: Scope, id: uuid::Uuid| {
        let handle = handle.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let effect: audit::Effect<i64> = Box::new(move |tx| {
                Box::pin(async move {
                    let seen: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM playbook_audit_log \
                             WHERE event_type = 'test.slow_commit'",
                            &[],
                        )
                        .await
                        .map_err(StoreError::Query)?
                        .get(0);
                    let event = AuditEvent::new("test.after", Actor::System).execution(id);
                    Ok((event.with("saw", seen), seen))
                })
            });
            handle.append_in(scope, effect).await.map(|(_, seen)| seen)
        }
    };
    let others: Vec<uuid::Uuid> = (0..8).map(|_| uuid::Uuid::new_v4()).collect();
    let mut after: Vec<_> = others
        .iter()
        .map(|&id| sees_slow_row(Scope::Execution(id), id))
        .collect();
    after.push(sees_slow_row(Scope::Execution(first), first));
    after.push(sees_slow_row(Scope::Global, uuid::Uuid::new_v4()));
    let (slow, after) = tokio::join!(slow, futures::future::join_all(after));
    let (others_saw, rest) = after.split_at(8);
    if fail {
        assert!(slow.is_err(), "{slow:?}");
        // Written while the failed batch committed: failed with it, none of it recorded.
        for outcome in others_saw {
            assert!(outcome.is_err(), "{outcome:?}");
        }
        let recorded: i64 = client
            .query_one(
                "SELECT count(*) FROM playbook_audit_log \
                 WHERE event_type IN ('test.slow_commit', 'test.after')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // What was queued after them is written once the writer has reconnected.
        for outcome in rest {
            assert_eq!(outcome.as_ref().ok(), Some(&0), "{rest:?}");
        }
        assert_eq!(
            recorded, 2,
            "only the two requests written after the failure"
        );
    } else {
        slow.expect("the slow batch commits");
        // Run while the slow batch committed: its row was not visible yet.
        for outcome in others_saw {
            assert_eq!(outcome.as_ref().ok(), Some(&0), "{others_saw:?}");
        }
        // The slow batch's run, and the global request, only after it committed.
        for outcome in rest {
            assert_eq!(outcome.as_ref().ok(), Some(&1), "{rest:?}");
        }
        let order: Vec<String> = query_column(
            &client,
            "SELECT event_type FROM playbook_audit_log WHERE node_id = 'n1' ORDER BY seq",
            &[],
        )
        .await;
        assert_eq!(order.len(), 11, "{order:?}");
        assert_eq!(order[0], "test.slow_commit", "{order:?}");
    }
    let rows = intact_rows(&client, "n1").await;
    handle
        .append(AuditEvent::new("test.event", Actor::System))
        .await
        .expect("the writer goes on");
    assert_eq!(intact_rows(&client, "n1").await, rows + 1);
}

#[tokio::test]
async fn a_batch_runs_while_another_commits_and_commits_after_it() {
    a_batch_written_while_another_commits(false).await;
}

#[tokio::test]
async fn a_batch_run_while_another_commits_fails_with_it() {
    a_batch_written_while_another_commits(true).await;
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
    let rows = count_events(&client, "after.kill").await;
    assert_eq!(rows, i64::try_from(committed).unwrap(), "{outcomes:?}");
    assert!(committed >= 1, "the writer never recovered: {outcomes:?}");
    assert!(handle.is_available());
    intact_rows(&client, "n1").await;
}

// ---------------------------------------------------------------------------------------------
// `playbookd audit verify` through the real binary, against chains tampered with in SQL.

/// A chain of 10 rows on node `n1` with signed checkpoints at seq 5 and 10, and a config for it.
struct Fixture {
    db: TestDb,
    dir: DaemonDir,
    config: std::path::PathBuf,
}

impl Fixture {
    async fn new() -> Fixture {
        let (db, dir, config) = configured("n1", "").await;
        let (handle, _stop) = writer(&db, "n1").await;
        let store = Store::connect(&db.config, 2, Duration::from_secs(5))
            .await
            .unwrap();
        let key = NodeKey::load_or_generate(&dir.path("node.key")).unwrap();
        let checkpointer = Checkpointer::new(handle.clone(), store, Arc::new(key));
        append_n(&handle, 5).await;
        let first = checkpointer
            .checkpoint()
            .await
            .unwrap()
            .expect("head moved");
        assert_eq!(first.seq, 5);
        assert_eq!(
            checkpointer.checkpoint().await.unwrap(),
            None,
            "head did not move"
        );
        append_n(&handle, 5).await;
        assert_eq!(checkpointer.checkpoint().await.unwrap().unwrap().seq, 10);
        Fixture { db, dir, config }
    }

    /// Runs `sql` as superuser with the append-only triggers disabled.
    async fn tamper(&self, sql: &str) {
        self.db
            .client()
            .await
            .batch_execute(&format!(
                "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
                 ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; {sql}; \
                 ALTER TABLE playbook_audit_log ENABLE TRIGGER USER; \
                 ALTER TABLE audit_checkpoints ENABLE TRIGGER USER;"
            ))
            .await
            .unwrap();
    }

    fn verify(&self, extra: &[&str]) -> (ExitStatus, String, String) {
        audit_cli("verify", &self.config, extra)
    }
}

/// Tampers with a fresh fixture, runs `audit verify`, and checks it exits 2 naming `expected`.
async fn assert_breach(sql: &str, expected: &str) {
    let fixture = Fixture::new().await;
    fixture.tamper(sql).await;
    let (status, stdout, stderr) = fixture.verify(&[]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(expected),
        "expected `{expected}` in:\n{stdout}"
    );
}

#[tokio::test]
async fn audit_verify_passes_an_untouched_chain_with_checkpoints() {
    let fixture = Fixture::new().await;
    let (status, stdout, stderr) = fixture.verify(&[]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "node n1: 10 rows, last seq 10, 2 checkpoints: ok"
    );
    let (status, stdout, _) = fixture.verify(&["--node", "n1"]);
    assert!(status.success(), "{stdout}");
    let (status, _, stderr) = fixture.verify(&["--node", "nobody"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, "nobody");
}

/// One test per tampering: `assert_breach(sql, expected)` under the test's own name.
macro_rules! breach_tests {
    ($($(#[doc = $doc:literal])* $name:ident: $sql:literal => $expected:literal;)*) => {$(
        $(#[doc = $doc])*
        #[tokio::test]
        async fn $name() {
            assert_breach($sql, $expected).await;
        }
    )*};
}

breach_tests! {
    audit_verify_names_a_deleted_row_when_the_rest_was_renumbered:
        "DELETE FROM playbook_audit_log WHERE seq = 6; \
         UPDATE playbook_audit_log SET seq = seq - 1 WHERE seq > 6"
        => "BREACH at seq 6: deleted";

    /// Shift seq 5.. up by one and put a copy of row 4 at 5.
    audit_verify_names_an_inserted_copy_of_a_row:
        "UPDATE playbook_audit_log SET seq = seq + 100 WHERE seq >= 5; \
         UPDATE playbook_audit_log SET seq = seq - 99 WHERE seq >= 105; \
         INSERT INTO playbook_audit_log SELECT node_id, 5, prev_hash, hash, event_type, event_data, created_at \
         FROM playbook_audit_log WHERE seq = 4"
        => "BREACH at seq 5: inserted";

    /// A new row at 3 that links to row 2 but cannot produce a valid hash.
    audit_verify_names_an_inserted_forged_row:
        "UPDATE playbook_audit_log SET seq = seq + 100 WHERE seq >= 3; \
         UPDATE playbook_audit_log SET seq = seq - 99 WHERE seq >= 103; \
         INSERT INTO playbook_audit_log SELECT node_id, 3, hash, sha256('forged'), 'test.event', '{\"i\": 2}', created_at \
         FROM playbook_audit_log WHERE seq = 2"
        => "BREACH at seq 3: inserted";

    audit_verify_names_swapped_rows:
        "UPDATE playbook_audit_log SET seq = 1000 WHERE seq = 3; \
         UPDATE playbook_audit_log SET seq = 3 WHERE seq = 4; \
         UPDATE playbook_audit_log SET seq = 4 WHERE seq = 1000"
        => "BREACH at seq 3: reordered";

    /// Row 7 moved to seq 3; rows 3..6 shift up by one.
    audit_verify_names_a_row_moved_earlier:
        "UPDATE playbook_audit_log SET seq = 1000 WHERE seq = 7; \
         UPDATE playbook_audit_log SET seq = seq + 100 WHERE seq BETWEEN 3 AND 6; \
         UPDATE playbook_audit_log SET seq = seq - 99 WHERE seq BETWEEN 103 AND 106; \
         UPDATE playbook_audit_log SET seq = 3 WHERE seq = 1000"
        => "BREACH at seq 3: reordered";

    audit_verify_detects_a_forged_checkpoint_signature:
        "UPDATE audit_checkpoints SET signature = set_byte(signature, 0, get_byte(signature, 0) # 1) \
         WHERE seq = 5"
        => "BREACH at seq 5: forged checkpoint: signature does not verify";

    audit_verify_names_a_modified_row:
        "UPDATE playbook_audit_log SET event_data = jsonb_set(event_data, '{i}', '99') WHERE seq = 4"
        => "BREACH at seq 4: modified";

    audit_verify_names_a_row_whose_prev_hash_was_edited:
        "UPDATE playbook_audit_log SET prev_hash = sha256('x') WHERE seq = 7"
        => "BREACH at seq 7: modified";

    audit_verify_names_a_deleted_row:
        "DELETE FROM playbook_audit_log WHERE seq = 6"
        => "BREACH at seq 6: deleted";

    audit_verify_detects_a_tail_cut_after_a_checkpoint:
        "DELETE FROM playbook_audit_log WHERE seq >= 8"
        => "BREACH at seq 8: truncated: a checkpoint covers seq 10 but the chain ends at seq 7";

    audit_verify_detects_a_chain_deleted_whole:
        "DELETE FROM playbook_audit_log"
        => "node n1: 0 rows stored (last seq 0), none verified, 2 checkpoints: BREACH at seq 1: truncated";
}

#[tokio::test]
async fn audit_verify_detects_a_rehashed_chain_through_its_checkpoint() {
    // Whoever rewrites row 3 and recomputes every later hash gets a self-consistent chain;
    // only the signed checkpoint at 5 still holds the original hash.
    let fixture = Fixture::new().await;
    let client = fixture.db.client().await;
    let rows = client
        .query(
            "SELECT seq, event_type, event_data, created_at FROM playbook_audit_log ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let mut prev = playbookd::store::chain::GENESIS_HASH;
    let mut sql = String::new();
    for row in rows {
        let seq: i64 = row.get(0);
        let mut data: serde_json::Value = row.get(2);
        if seq == 3 {
            data["i"] = serde_json::json!(42);
        }
        let canonical = audit::canonical_bytes("n1", seq, row.get(1), &data, row.get(3));
        let hash = audit::chain_hash(&prev, &canonical);
        sql.push_str(&format!(
            "UPDATE playbook_audit_log SET prev_hash = '\\x{}', hash = '\\x{}', event_data = '{}' WHERE seq = {seq};",
            hex::encode(prev),
            hex::encode(hash),
            data
        ));
        prev = hash;
    }
    fixture.tamper(&sql).await;
    let (status, stdout, _) = fixture.verify(&[]);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, "BREACH at seq 5: checkpoint mismatch");
}

#[tokio::test]
async fn audit_verify_pins_the_node_key() {
    let fixture = Fixture::new().await;
    let own = fixture.dir.path("node.pub");
    let (status, stdout, stderr) = fixture.verify(&["--trusted-node-key", own.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");

    let other_dir = tempfile::tempdir().unwrap();
    NodeKey::load_or_generate(&other_dir.path().join("node.key")).unwrap();
    let other = other_dir.path().join("node.pub");
    let (status, stdout, _) = fixture.verify(&["--trusted-node-key", other.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, "BREACH at seq 5: untrusted checkpoint key");

    let (status, _, stderr) = fixture.verify(&["--trusted-node-key", "/nonexistent.pub"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, "/nonexistent.pub");
}

// ---------------------------------------------------------------------------------------------
// The daemon's own checkpoints.

fn stop(daemon: &mut ChildDaemon) {
    daemon.stop_within(Duration::from_secs(10));
}

#[tokio::test]
async fn a_stopped_daemon_leaves_a_shutdown_checkpoint_that_verifies() {
    let (db, dir, config, mut daemon) = serve_fresh("node-a", "").await;
    stop(&mut daemon);

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT c.seq, c.signature, l.event_type FROM audit_checkpoints c \
             JOIN playbook_audit_log l USING (node_id, seq) WHERE node_id = 'node-a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one checkpoint, at shutdown");
    let seq: i64 = rows[0].get(0);
    let signature: Vec<u8> = rows[0].get(1);
    let event: String = rows[0].get(2);
    let head = chain_head(&client, "node-a").await;
    assert_eq!((seq, event.as_str()), (head, "daemon.stop"));
    // journald's independent copy carries the same signature.
    let logged = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &signature);
    let log = daemon.log_text();
    assert_contains(&log, "audit checkpoint signed");
    assert!(log.contains(&logged), "signature not in the log:\n{log}");

    let mode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(dir.path("node.key")).unwrap());
    assert_eq!(mode & 0o777, 0o600);
    let (status, stdout, stderr) = audit_cli(
        "verify",
        &config,
        &["--trusted-node-key", dir.path("node.pub").to_str().unwrap()],
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("node node-a: {head} rows, last seq {head}, 1 checkpoints: ok")
    );
}

#[tokio::test]
async fn a_daemon_refuses_a_chain_cut_below_its_last_checkpoint() {
    let (db, dir, config, mut daemon) = serve_fresh("node-a", "").await;
    stop(&mut daemon);
    let client = db.client().await;
    let head = chain_head(&client, "node-a").await;
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             DELETE FROM playbook_audit_log WHERE seq = {head};"
        ))
        .await
        .unwrap();
    let stderr = serve_refused(&config);
    // The chain anchor (outside the database) names the lost row before the database's own
    // checkpoints are consulted.
    let expected = format!(
        "seq {head} is missing (the database ends at seq {}",
        head - 1
    );
    assert_contains(&stderr, &expected);
    // Without the anchor (lost with the state directory), the checkpoint still catches it.
    std::fs::remove_file(dir.path("chain-anchor.json")).unwrap();
    let stderr = serve_refused(&config);
    let expected = format!(
        "ends at seq {} but a signed checkpoint covers seq {head}",
        head - 1
    );
    assert_contains(&stderr, &expected);
}

#[tokio::test]
async fn a_running_daemon_checkpoints_periodically() {
    let (db, dir, config) =
        configured("node-a", "[audit]\ncheckpoint_interval_seconds = 1\n").await;
    let mut daemon = ChildDaemon::start(&config, &dir.path("daemon.log"));
    daemon.wait_for_log("audit checkpoint signed", Duration::from_secs(20));
    let client = db.client().await;
    let seqs: Vec<i64> = query_column(
        &client,
        "SELECT seq FROM audit_checkpoints ORDER BY seq",
        &[],
    )
    .await;
    assert!(!seqs.is_empty(), "a checkpoint signed while running");
    let head = chain_head(&client, "node-a").await;
    assert!(
        seqs.iter().all(|seq| (1..=head).contains(seq)),
        "checkpoints cover written rows only: {seqs:?} (head {head})"
    );
    stop(&mut daemon);
}

#[tokio::test]
async fn a_group_readable_node_key_stops_the_daemon_with_78() {
    use std::os::unix::fs::PermissionsExt;
    let (_db, dir, config) = configured("node-a", "").await;
    NodeKey::load_or_generate(&dir.path("node.key")).unwrap();
    std::fs::set_permissions(dir.path("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "node.key");
    assert_contains(&stderr, "0644");
}

// ---------------------------------------------------------------------------------------------
// tools/verify_chain.py re-verifies what the daemon wrote, independently of this crate.

#[tokio::test]
async fn the_python_verifier_agrees_with_a_daemon_written_chain() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: python3 is not installed");
        return;
    }
    let (db, dir, _config, mut daemon) = serve_fresh("node-a", "").await;
    stop(&mut daemon);
    // A second chain with data that exercises the canonical encoding: escapes, non-ASCII keys
    // (sorted by UTF-16 code unit), floats, big and negative numbers, nesting.
    {
        let (handle, _stop) = writer(&db, "node-b").await;
        let event = AuditEvent::new("test.tricky", Actor::Uid(1000))
            .with(
                "text",
                "quote \" backslash \\ tab \t nl \n bell \u{7} é 😀 \u{2028}",
            )
            .with("\u{e9}", 1)
            .with("\u{1f600}", 2)
            .with("\u{ff61}", 3)
            .with(
                "floats",
                serde_json::json!([0.1, 1.5, -0.0, 1e21, 1e-7, 123456789012.25, 5e-324]),
            )
            .with(
                "ints",
                serde_json::json!([0, -1, 9007199254740993_u64, 1_000_000]),
            )
            .with(
                "nested",
                serde_json::json!({"b": [true, false, null], "a": {"z": "", "y": []}}),
            );
        handle.append(event).await.unwrap();
        append_n(&handle, 3).await;
    }
    let verify = |node: &str| {
        let output = std::process::Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_chain.py"))
            .args(["--dsn", &db.url(), "--node", node])
            .arg("--trusted-node-key")
            .arg(dir.path("node.pub"))
            .output()
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = verify("node-a");
    assert!(status.success(), "{stdout}{stderr}");
    let head = chain_head(&db.client().await, "node-a").await;
    assert_eq!(
        stdout.trim(),
        format!("node node-a: {head} rows, last seq {head}, 1 checkpoints: ok")
    );
    // node-b has no checkpoint: its rows verify, but the pinned key was not checked (exit 3).
    let (status, stdout, stderr) = verify("node-b");
    assert_eq!(status.code(), Some(3), "{stdout}{stderr}");
    assert_contains(
        &stdout,
        "4 rows, last seq 4, 0 checkpoints: rows ok; pinned node key NOT CHECKED: no checkpoint signed yet",
    );
    // The Rust verifier agrees, and the Python one fails on what the Rust one fails on.
    let client = db.client().await;
    intact_rows(&client, "node-b").await;
    let head = chain_head(&client, "node-a").await;
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             UPDATE playbook_audit_log SET event_data = event_data || '{{\"text\": \"x\"}}' WHERE node_id = 'node-b' AND seq = 1; \
             ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; \
             DELETE FROM playbook_audit_log WHERE node_id = 'node-a' AND seq = {head};"
        ))
        .await
        .unwrap();
    let (status, stdout, _) = verify("node-b");
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, "BREACH at seq 1: modified");
    let (status, stdout, _) = verify("node-a");
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, &format!("BREACH at seq {head}: truncated"));
}

#[tokio::test]
async fn verify_chain_reports_the_truncation_structurally() {
    let fixture = Fixture::new().await;
    fixture
        .tamper("DELETE FROM playbook_audit_log WHERE seq >= 9")
        .await;
    let report = verify_chain(&fixture.db.client().await, "n1")
        .await
        .unwrap();
    assert_eq!(
        (report.rows, report.last_seq, report.checkpoints),
        (8, 8, 2)
    );
    assert_eq!(
        report.breach,
        Some((
            9,
            Breach::Truncated {
                checkpoint_seq: 10,
                last_seq: 8
            }
        ))
    );
}

#[tokio::test]
async fn the_daemons_role_may_only_read_and_append_the_evidence() {
    let db = crate::helpers::OwnerRoleDb::new().await;
    let config = db.config.clone();
    let outcome = async {
        let client = db.client().await;
        let (handle, _stop) =
            audit::start_writer(config.clone(), "n1".into(), CancellationToken::new())
                .await
                .expect("the owner role may open the chain");
        handle
            .append(AuditEvent::new("test.event", Actor::System))
            .await
            .expect("and append to it");
        let mut refused = Vec::new();
        for statement in [
            "UPDATE playbook_audit_log SET event_type = 'x'",
            "DELETE FROM playbook_audit_log",
            "TRUNCATE playbook_audit_log",
            "DELETE FROM audit_checkpoints",
        ] {
            let outcome = client.batch_execute(statement).await;
            refused.push(match outcome {
                Ok(()) => format!("{statement}: allowed"),
                Err(error) => format!(
                    "{statement}: {}",
                    error.as_db_error().map_or("", |e| e.message())
                ),
            });
        }
        refused
    }
    .await;
    assert_eq!(outcome.len(), 4);
    for line in &outcome {
        // The privilege check, not the trigger ("append-only"), refuses each.
        assert_contains(line, "permission denied");
    }
}

/// An append whose effect is foreseen ([`audit::Body::foreseen`]), its two checked changes
/// writing 1 and 3 to `scratch`, the second holding only if `holds` (each with parameters, so
/// that the second's are renumbered after the first's in the one statement); the effect itself
/// writes 2, records `test.effect` and counts its runs in `runs`.
fn foreseen_append(holds: bool, runs: Arc<AtomicUsize>) -> audit::Body<&'static str> {
    let effect: audit::Effect<&'static str> = Box::new(move |tx| {
        let runs = runs.clone();
        Box::pin(async move {
            runs.fetch_add(1, AtomicOrdering::SeqCst);
            tx.execute("INSERT INTO scratch (k) VALUES (2)", &[])
                .await
                .map_err(StoreError::Query)?;
            Ok((AuditEvent::new("test.effect", Actor::System), "effect"))
        })
    });
    audit::Body::from(effect).foreseen(Box::new(move || {
        Some(audit::Foreseen {
            records: AuditEvent::new("test.foreseen", Actor::System).into(),
            value: "foreseen",
            checked: vec![
                audit::Checked::new(
                    &audit::CheckedSql {
                        with: "one AS (INSERT INTO scratch (k) VALUES ($1) RETURNING 1)",
                        expect: "EXISTS (SELECT 1 FROM one)",
                        what: "test one",
                    },
                    vec![Box::new(1_i32)],
                ),
                audit::Checked::new(
                    &audit::CheckedSql {
                        with: "other AS (INSERT INTO scratch (k) VALUES ($1) RETURNING 1)",
                        expect: "$2::bool AND EXISTS (SELECT 1 FROM other)",
                        what: "test other",
                    },
                    vec![Box::new(3_i32), Box::new(holds)],
                ),
            ],
        })
    }))
}

/// A lone append whose foreseen changes do what its records say is written in one statement:
/// its checked changes and its foreseen record commit, and its effect never runs.
#[tokio::test]
async fn a_lone_foreseen_append_commits_its_foreseen_record_without_running_its_effect() {
    let db = TestDb::new().await;
    let (client, handle, _stop) = scratch_writer(&db, "k int").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (appended, value) = handle
        .append_in(Scope::Event, foreseen_append(true, runs.clone()))
        .await
        .expect("commits");
    assert_eq!(
        (appended.event.event_type, value),
        ("test.foreseen", "foreseen")
    );
    assert_eq!(runs.load(AtomicOrdering::SeqCst), 0, "the effect ran");
    let written: Vec<i32> = query_column(&client, "SELECT k FROM scratch ORDER BY k", &[]).await;
    assert_eq!(written, [1, 3]);
    let types = logged_event_types(&client).await;
    assert_eq!(types, ["test.foreseen"]);
    intact_rows(&client, "n1").await;
}

/// When a foreseen change does not do what its records say, it raises: the one statement rolls
/// back whole (both changes and the record are gone, the one that held too) and the append is
/// written the ordinary way, its effect deciding its record. The writer goes on.
#[tokio::test]
async fn a_foreseen_append_that_surprises_is_rolled_back_and_written_by_its_effect() {
    let db = TestDb::new().await;
    let (client, handle, _stop) = scratch_writer(&db, "k int").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (appended, value) = handle
        .append_in(Scope::Event, foreseen_append(false, runs.clone()))
        .await
        .expect("commits the ordinary way");
    assert_eq!(
        (appended.event.event_type, value),
        ("test.effect", "effect")
    );
    assert_eq!(runs.load(AtomicOrdering::SeqCst), 1);
    let written: Vec<i32> = query_column(&client, "SELECT k FROM scratch", &[]).await;
    assert_eq!(written, [2], "the one-flight write was not rolled back");
    handle
        .append(AuditEvent::new("after", Actor::System))
        .await
        .expect("the writer goes on");
    let types = logged_event_types(&client).await;
    assert_eq!(types, ["test.effect", "after"]);
    intact_rows(&client, "n1").await;
}
