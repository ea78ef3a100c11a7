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
-- (a test asks these functions about every pair of states and compares). Plain SQL expressions,
-- so the triggers' WHEN clauses evaluate them without calling a function per row: a legal write
-- costs nothing more, and only a refused one reaches playbook_refuse_transition().
CREATE FUNCTION playbook_transition_allowed(machine text, from_state text, to_state text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (machine, from_state, to_state) IN (
        ('run', 'pending', 'running'),
        ('run', 'pending', 'rolling_back'),
        ('run', 'pending', 'safe_halted'),
        ('run', 'running', 'running'),
        ('run', 'running', 'awaiting_approval'),
        ('run', 'running', 'completed'),
        ('run', 'running', 'rolling_back'),
        ('run', 'running', 'safe_halted'),
        ('run', 'awaiting_approval', 'awaiting_approval'),
        ('run', 'awaiting_approval', 'running'),
        ('run', 'awaiting_approval', 'rolling_back'),
        ('run', 'awaiting_approval', 'safe_halted'),
        ('run', 'rolling_back', 'rolled_back'),
        ('run', 'rolling_back', 'cancelled'),
        ('run', 'rolling_back', 'timed_out'),
        ('run', 'rolling_back', 'rejected'),
        ('run', 'rolling_back', 'safe_halted'),
        ('step', 'pending', 'running'),
        ('step', 'pending', 'skipped'),
        ('step', 'pending', 'failed'),
        ('step', 'running', 'running'),
        ('step', 'running', 'succeeded'),
        ('step', 'running', 'failed'),
        ('step', 'running', 'rolled_back'),
        ('step', 'running', 'rollback_failed'),
        ('step', 'succeeded', 'rolled_back'),
        ('step', 'succeeded', 'rollback_failed'),
        ('step', 'failed', 'rolled_back'),
        ('step', 'failed', 'rollback_failed'))
$$;

-- A state no pair leaves: a row in it never changes again.
CREATE FUNCTION playbook_state_is_terminal(machine text, state text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (machine, state) NOT IN (
        ('run', 'pending'), ('run', 'running'), ('run', 'awaiting_approval'), ('run', 'rolling_back'),
        ('step', 'pending'), ('step', 'running'), ('step', 'succeeded'), ('step', 'failed'))
$$;

-- Called only for a write the WHEN clause refused: says why, and refuses it.
CREATE FUNCTION playbook_refuse_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF playbook_state_is_terminal(TG_ARGV[0], OLD.state) THEN
        RAISE EXCEPTION '% state % is terminal: % refused', TG_ARGV[0], OLD.state, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION '% state change % -> % is not allowed', TG_ARGV[0], OLD.state, NEW.state
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

-- Every UPDATE of a row in a terminal state, and every change of state not listed, is refused,
-- whoever makes it (the daemon's guarded UPDATEs never try; this stops the rest).
CREATE TRIGGER playbook_executions_transition
    BEFORE UPDATE ON playbook_executions
    FOR EACH ROW
    WHEN (playbook_state_is_terminal('run', OLD.state)
          OR (OLD.state IS DISTINCT FROM NEW.state
              AND NOT playbook_transition_allowed('run', OLD.state, NEW.state)))
    EXECUTE FUNCTION playbook_refuse_transition('run');
CREATE TRIGGER playbook_step_runs_transition
    BEFORE UPDATE ON playbook_step_runs
    FOR EACH ROW
    WHEN (playbook_state_is_terminal('step', OLD.state)
          OR (OLD.state IS DISTINCT FROM NEW.state
              AND NOT playbook_transition_allowed('step', OLD.state, NEW.state)))
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
