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

-- 2. The allowed state changes of runs and steps: the same pairs as
-- src/store/transitions.rs (a test compares them). A state with no pair leaving it is terminal.
CREATE TABLE playbook_state_transitions (
    machine     text NOT NULL CHECK (machine IN ('run', 'step')),
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    PRIMARY KEY (machine, from_state, to_state)
);
INSERT INTO playbook_state_transitions (machine, from_state, to_state) VALUES
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
    ('step', 'failed', 'rollback_failed');

-- Refuses every UPDATE of a row in a terminal state, and every change of state the table does
-- not list, whoever makes it (the daemon's guarded UPDATEs never try; this stops the rest).
-- One lookup: the pairs leaving OLD.state say both whether it is terminal (none) and whether
-- NEW.state is allowed.
CREATE FUNCTION playbook_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    leaves boolean;
    allowed boolean;
BEGIN
    SELECT count(*) > 0, coalesce(bool_or(to_state = NEW.state), false) INTO leaves, allowed
    FROM playbook_state_transitions WHERE machine = TG_ARGV[0] AND from_state = OLD.state;
    IF NOT leaves THEN
        RAISE EXCEPTION '% state % is terminal: % refused', TG_ARGV[0], OLD.state, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state AND NOT allowed THEN
        RAISE EXCEPTION '% state change % -> % is not allowed', TG_ARGV[0], OLD.state, NEW.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- The WHEN clause keeps the common write (a step started again: same state, not terminal) from
-- calling the function at all; it lists the terminal states, which a test compares with the
-- code's (and with the table: the states no pair leaves).
CREATE TRIGGER playbook_executions_transition
    BEFORE UPDATE ON playbook_executions
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.state IN ('completed', 'rolled_back', 'safe_halted', 'cancelled', 'timed_out', 'rejected'))
    EXECUTE FUNCTION playbook_check_transition('run');
CREATE TRIGGER playbook_step_runs_transition
    BEFORE UPDATE ON playbook_step_runs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.state IN ('skipped', 'rolled_back', 'rollback_failed'))
    EXECUTE FUNCTION playbook_check_transition('step');

-- The table is part of the schema, not of the data: the daemon's role may only read it.
REVOKE ALL ON playbook_state_transitions FROM PUBLIC;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON playbook_state_transitions FROM CURRENT_USER;
GRANT SELECT ON playbook_state_transitions TO CURRENT_USER;

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
