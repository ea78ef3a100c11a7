-- Less work per statement in the audit writer's backend (issue 16): one CHECK for the columns
-- other than the state on playbook_executions and one on playbook_step_runs, and no index on the
-- audit log's created_at.
--
-- PostgreSQL re-reads every CHECK of a table from its stored node text (stringToNode) and plans
-- it again in every statement that writes the table, whatever the statement changes (see V11).
-- With V11 that was still about a fifth of the writer's backend work for a noop-3 run: 11 CHECKs,
-- 8 of them on playbook_executions and playbook_step_runs, whose rows a run writes one statement
-- at a time. Here the CHECKs of those two tables' columns other than `state` become one CHECK per
-- table, which stores only a call of a plpgsql function (compiled once per session) taking those
-- columns. Same rules: each function returns the AND of exactly the expressions of the CHECKs it
-- replaces, and a CHECK refuses a row only when its expression is false, so it refuses a row
-- exactly when one of them would have (NULL stays NULL, as before: the NOT NULL columns refuse it
-- themselves, first). A refused row now names the table's row CHECK (`..._row_check`), with the
-- row in the error's detail as before. The state CHECKs of V11 stay as they are, under their
-- names: the transition guard's tests and the status API's tests refer to them.
--
-- Measured with benches/sql/guard.sh (callgrind, PostgreSQL 15): 4.3 % fewer instructions for the
-- writer's statements of a noop-3 run. Merged into one plain `a AND b AND c` CHECK instead, the
-- expressions cost as much as apart; merging the state CHECKs as well would save 2.6 % more, at
-- the price of their names. The audit log keeps its three CHECKs: its one INSERT per transaction
-- carries the rows of a whole batch, and a plpgsql call per row costs more than three built-in
-- CHECKs re-read once per statement as soon as a statement holds more than about five rows (an
-- INSERT of 72 rows, 32 noop-3 runs' worth of one transaction, cost 3.4 % more with a row CHECK).
--
-- Search path: as in V11, the bodies name every operator and function in pg_catalog, and the
-- CHECKs refer to the functions by OID.

CREATE FUNCTION playbook_execution_row_valid(playbook_sha256 bytea, rollback_cause text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN pg_catalog.octet_length(playbook_sha256) OPERATOR(pg_catalog.=) 32
        AND rollback_cause OPERATOR(pg_catalog.=) ANY ('{failed,timed_out,cancelled,rejected}');
END;
$$;

CREATE FUNCTION playbook_step_row_valid(step_index integer, attempts integer, idempotency_key bytea,
                                        error_class text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN step_index OPERATOR(pg_catalog.>=) 0
        AND attempts OPERATOR(pg_catalog.>=) 0
        AND pg_catalog.octet_length(idempotency_key) OPERATOR(pg_catalog.=) 32
        AND error_class OPERATOR(pg_catalog.=) ANY ('{transient,permanent,timeout,cancelled}');
END;
$$;

ALTER TABLE playbook_executions
    DROP CONSTRAINT playbook_executions_playbook_sha256_check,
    DROP CONSTRAINT playbook_executions_rollback_cause_check,
    ADD CONSTRAINT playbook_executions_row_check
        CHECK (playbook_execution_row_valid(playbook_sha256, rollback_cause));
ALTER TABLE playbook_step_runs
    DROP CONSTRAINT playbook_step_runs_step_index_check,
    DROP CONSTRAINT playbook_step_runs_attempts_check,
    DROP CONSTRAINT playbook_step_runs_idempotency_key_check,
    DROP CONSTRAINT playbook_step_runs_error_class_check,
    ADD CONSTRAINT playbook_step_runs_row_check
        CHECK (playbook_step_row_valid(step_index, attempts, idempotency_key, error_class));

-- V11's functions for these two lists are called by no CHECK any more.
DROP FUNCTION playbook_rollback_cause_valid(text);
DROP FUNCTION playbook_error_class_valid(text);

-- No query reads the audit log by created_at (src/: by node and seq, through the primary key; by
-- execution, through playbook_audit_log_execution_idx; the events of one run are sorted after
-- that index found them), yet every audit row paid an entry in this index: 1.4 % of the writer's
-- instructions for a noop-3 run (guard.sh, as above).
DROP INDEX playbook_audit_log_created_idx;
