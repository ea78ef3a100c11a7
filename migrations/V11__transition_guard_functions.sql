-- The transition guard and the state CHECKs, with less work per statement (issue 16).
--
-- PostgreSQL keeps a trigger's WHEN clause and a CHECK constraint as stored node text and
-- re-reads and re-plans it (stringToNode, constant folding of the ARRAY[...] / IN list) in every
-- statement that writes the table, for every constraint of the table, whatever the statement
-- changes. A plpgsql function is compiled once per session instead, and a CHECK or trigger that
-- calls it stores only the call. Same guarantees, same names (constraints, triggers), same
-- errors: tests/it/store.rs tries every pair of states against these triggers and compares with
-- src/store/transitions.rs. The audit writer's backend runs a noop-3 run's statements in 4.03 M
-- instructions here against 6.87 M at V10 (-41.4 %; benches/sql/guard.sh, PostgreSQL 15, median
-- of 5 alternating rounds). Alternatives measured the same way: a CASE on the old state in one trigger
-- function per table (0.3 % cheaper, but the machine written twice as code), a WHEN clause
-- calling an IMMUTABLE pair function (+3 %), a constant array instead of a function in the
-- CHECKs (+5 %).
--
-- Search path: these functions run in the caller's session (not SECURITY DEFINER: they read and
-- write nothing), so their bodies name no object through the search path. Every operator is
-- written OPERATOR(pg_catalog.…): a role that could put its own `=` (text, text) ahead of
-- pg_catalog's in its search_path must not be able to turn a refusal into an approval. (A
-- `SET search_path` clause would do the same at about 6 % of a run: a GUC change at every call.)
-- The triggers and CHECKs below refer to the functions by OID, so no search path applies to
-- them at all.

-- 1. The transition guard: one trigger function for both tables, whose arguments are the
-- machine's name and its allowed pairs, written as in V5 ('from -> to'; PostgreSQL keeps a
-- trigger's arguments as plain strings in its relation cache: nothing to parse per statement).
-- A state that no pair leaves is terminal: every UPDATE of such a row is refused. A write that
-- keeps the state is allowed in every other state, as in V5, because each lists itself
-- ('pending -> pending'; src/store/transitions.rs lists only some of these, and the test checks
-- the rule). A state this schema does not know (the CHECK keeps it out) allows no UPDATE at all,
-- where V5 allowed one that kept it. A NULL new state is left to the column's NOT NULL, as before.
DROP TRIGGER playbook_executions_transition ON playbook_executions;
DROP TRIGGER playbook_step_runs_transition ON playbook_step_runs;
DROP FUNCTION playbook_refuse_transition();

CREATE FUNCTION playbook_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state OPERATOR(pg_catalog.||) ' -> ' OPERATOR(pg_catalog.||) NEW.state)
            OPERATOR(pg_catalog.=) ANY (TG_ARGV[1:]) IS NOT FALSE THEN
        RETURN NEW;
    END IF;
    IF OLD.state OPERATOR(pg_catalog.=) NEW.state THEN
        RAISE EXCEPTION '% state % is terminal: % refused', TG_ARGV[0], OLD.state, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION '% state change % -> % is not allowed', TG_ARGV[0], OLD.state, NEW.state
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER playbook_executions_transition
    BEFORE UPDATE ON playbook_executions
    FOR EACH ROW EXECUTE FUNCTION playbook_guard_transition('run',
        'pending -> pending', 'pending -> running', 'pending -> rolling_back', 'pending -> safe_halted',
        'running -> running', 'running -> awaiting_approval', 'running -> completed',
        'running -> rolling_back', 'running -> safe_halted',
        'awaiting_approval -> awaiting_approval', 'awaiting_approval -> running',
        'awaiting_approval -> rolling_back', 'awaiting_approval -> safe_halted',
        'rolling_back -> rolling_back', 'rolling_back -> rolled_back', 'rolling_back -> cancelled',
        'rolling_back -> timed_out', 'rolling_back -> rejected', 'rolling_back -> safe_halted');

CREATE TRIGGER playbook_step_runs_transition
    BEFORE UPDATE ON playbook_step_runs
    FOR EACH ROW EXECUTE FUNCTION playbook_guard_transition('step',
        'pending -> pending', 'pending -> running', 'pending -> skipped', 'pending -> failed',
        'running -> running', 'running -> succeeded', 'running -> failed',
        'running -> rolled_back', 'running -> rollback_failed',
        'succeeded -> succeeded', 'succeeded -> rolled_back', 'succeeded -> rollback_failed',
        'failed -> failed', 'failed -> rolled_back', 'failed -> rollback_failed');

-- 2. The value lists of the two guarded tables' CHECKs, as IMMUTABLE functions under the same
-- constraint names; a CHECK stores only the call. One function per list: a single one taking the
-- list's name as well cost 6 % more per run (its CASE is evaluated at every call). STRICT: NULL
-- passes the CHECK, as it passed `IN (…)`; the NOT NULL columns refuse it themselves. EXECUTE
-- stays with PUBLIC (every function's default): the runtime role evaluates these CHECKs on its
-- writes, and they reveal nothing.
CREATE FUNCTION playbook_run_state_valid(state text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN state OPERATOR(pg_catalog.=) ANY
        ('{pending,running,awaiting_approval,completed,rolling_back,rolled_back,safe_halted,cancelled,timed_out,rejected}');
END;
$$;

CREATE FUNCTION playbook_step_state_valid(state text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN state OPERATOR(pg_catalog.=)
        ANY ('{pending,running,succeeded,failed,skipped,rolled_back,rollback_failed}');
END;
$$;

CREATE FUNCTION playbook_rollback_cause_valid(cause text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN cause OPERATOR(pg_catalog.=) ANY ('{failed,timed_out,cancelled,rejected}');
END;
$$;

CREATE FUNCTION playbook_error_class_valid(class text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN class OPERATOR(pg_catalog.=) ANY ('{transient,permanent,timeout,cancelled}');
END;
$$;

ALTER TABLE playbook_executions
    DROP CONSTRAINT playbook_executions_state_check,
    ADD CONSTRAINT playbook_executions_state_check CHECK (playbook_run_state_valid(state)),
    DROP CONSTRAINT playbook_executions_rollback_cause_check,
    ADD CONSTRAINT playbook_executions_rollback_cause_check
        CHECK (playbook_rollback_cause_valid(rollback_cause));
ALTER TABLE playbook_step_runs
    DROP CONSTRAINT playbook_step_runs_state_check,
    ADD CONSTRAINT playbook_step_runs_state_check CHECK (playbook_step_state_valid(state)),
    DROP CONSTRAINT playbook_step_runs_error_class_check,
    ADD CONSTRAINT playbook_step_runs_error_class_check CHECK (playbook_error_class_valid(error_class));
