-- One owner of execution state (issue #15).

-- 1. SAFE-HALT belongs to a node. V1 allowed one active halt in the whole database, so one
-- node's halt-resolve cleared another node's halt. Now: at most one active halt per node, and
-- (shape ready for the fleet work) at most one active fleet-wide halt, which every node obeys.
ALTER TABLE playbook_safe_halt_state
    ADD COLUMN scope text NOT NULL DEFAULT 'node' CHECK (scope IN ('node', 'fleet'));
DROP INDEX playbook_safe_halt_one_active_idx;
CREATE UNIQUE INDEX playbook_safe_halt_one_active_per_node_idx
    ON playbook_safe_halt_state (node_id) WHERE is_active AND scope = 'node';
CREATE UNIQUE INDEX playbook_safe_halt_one_active_fleet_idx
    ON playbook_safe_halt_state (scope) WHERE is_active AND scope = 'fleet';

-- 2. The allowed state changes of runs and steps: the same pairs as src/store/transitions.rs
-- (tests/it/store.rs tries every pair of states against these triggers and compares). They are
-- written as constant arrays in the triggers' WHEN clauses, which PostgreSQL keeps parsed: a legal
-- write is checked by two array lookups and calls no function; only a refused one reaches
-- playbook_refuse_transition(), which says why. A state no pair leaves is terminal: every UPDATE
-- of a row in it is refused.
CREATE FUNCTION playbook_refuse_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IS NOT DISTINCT FROM NEW.state THEN
        RAISE EXCEPTION '% state % is terminal: % refused', TG_ARGV[0], OLD.state, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION '% state change % -> % is not allowed', TG_ARGV[0], OLD.state, NEW.state
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER playbook_executions_transition
    BEFORE UPDATE ON playbook_executions
    FOR EACH ROW
    WHEN (OLD.state = ANY (ARRAY['completed', 'rolled_back', 'safe_halted', 'cancelled', 'timed_out', 'rejected'])
          OR (OLD.state IS DISTINCT FROM NEW.state
              AND NOT (OLD.state || ' -> ' || NEW.state) = ANY (ARRAY['pending -> running',
              'pending -> rolling_back',
              'pending -> safe_halted',
              'running -> running',
              'running -> awaiting_approval',
              'running -> completed',
              'running -> rolling_back',
              'running -> safe_halted',
              'awaiting_approval -> awaiting_approval',
              'awaiting_approval -> running',
              'awaiting_approval -> rolling_back',
              'awaiting_approval -> safe_halted',
              'rolling_back -> rolled_back',
              'rolling_back -> cancelled',
              'rolling_back -> timed_out',
              'rolling_back -> rejected',
              'rolling_back -> safe_halted'])))
    EXECUTE FUNCTION playbook_refuse_transition('run');

CREATE TRIGGER playbook_step_runs_transition
    BEFORE UPDATE ON playbook_step_runs
    FOR EACH ROW
    WHEN (OLD.state = ANY (ARRAY['skipped', 'rolled_back', 'rollback_failed'])
          OR (OLD.state IS DISTINCT FROM NEW.state
              AND NOT (OLD.state || ' -> ' || NEW.state) = ANY (ARRAY['pending -> running',
              'pending -> skipped',
              'pending -> failed',
              'running -> running',
              'running -> succeeded',
              'running -> failed',
              'running -> rolled_back',
              'running -> rollback_failed',
              'succeeded -> rolled_back',
              'succeeded -> rollback_failed',
              'failed -> rolled_back',
              'failed -> rollback_failed'])))
    EXECUTE FUNCTION playbook_refuse_transition('step');

-- 3. Re-verify what is resumed: the signature bytes that verified each version, beside it,
-- so a run resumed from stored bytes is verified again against the trust store of the day.
CREATE TABLE playbook_version_signatures (
    playbook_id    text        NOT NULL,
    version        bigint      NOT NULL,
    -- Hex SHA-256 of the signer's SubjectPublicKeyInfo DER.
    key_id         text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{64}$'),
    signature      bytea       NOT NULL CHECK (octet_length(signature) BETWEEN 1 AND 4096),
    recorded_at    timestamptz NOT NULL,
    PRIMARY KEY (playbook_id, version, key_id),
    FOREIGN KEY (playbook_id, version) REFERENCES playbook_versions (playbook_id, version)
);
