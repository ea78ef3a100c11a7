-- playbookd initial schema. Forward-only: never edit an applied migration, add a new one.

-- Every version of every playbook ever accepted, with the exact verified bytes, so a run can
-- resume from what was verified whatever happens to the file later, and so anti-rollback
-- (no lower version, no different bytes for the same version) holds across restarts.
CREATE TABLE playbook_versions (
    playbook_id     text        NOT NULL CHECK (playbook_id ~ '^[a-z0-9][a-z0-9-]*$'),
    version         bigint      NOT NULL CHECK (version > 0),
    sha256          bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    signer_key_ids  text[]      NOT NULL CHECK (cardinality(signer_key_ids) >= 1),
    content         bytea       NOT NULL,
    first_seen      timestamptz NOT NULL,
    PRIMARY KEY (playbook_id, version)
);

CREATE TABLE playbook_executions (
    execution_id        uuid        PRIMARY KEY,
    node_id             text        NOT NULL,
    playbook_id         text        NOT NULL,
    playbook_version    bigint      NOT NULL,
    playbook_sha256     bytea       NOT NULL CHECK (octet_length(playbook_sha256) = 32),
    state               text        NOT NULL CHECK (state IN (
                            'pending', 'running', 'awaiting_approval', 'completed', 'rolling_back',
                            'rolled_back', 'safe_halted', 'cancelled', 'timed_out', 'rejected')),
    current_step        integer,
    step_results        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    nonce               text        NOT NULL UNIQUE,
    policy_decision_id  text        NOT NULL,
    policy              text        NOT NULL,
    outcome             text        NOT NULL,
    org_id              text        NOT NULL,
    severity            text        NOT NULL,
    subject             jsonb       NOT NULL,
    requested_by_uid    bigint      NOT NULL,
    -- Why the run ended the way it did (failure, denial, cancel reason); never a secret.
    end_reason          text,
    started_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    completed_at        timestamptz,
    FOREIGN KEY (playbook_id, playbook_version) REFERENCES playbook_versions (playbook_id, version)
);
-- Status API filters and keyset pagination (newest first, execution_id breaks ties).
CREATE INDEX playbook_executions_started_idx ON playbook_executions (started_at DESC, execution_id DESC);
CREATE INDEX playbook_executions_state_idx ON playbook_executions (state, started_at DESC, execution_id DESC);
CREATE INDEX playbook_executions_playbook_idx ON playbook_executions (playbook_id, started_at DESC, execution_id DESC);
CREATE INDEX playbook_executions_org_idx ON playbook_executions (org_id, started_at DESC, execution_id DESC);
-- Startup recovery reads the non-terminal runs of this node.
CREATE INDEX playbook_executions_active_idx ON playbook_executions (node_id)
    WHERE state IN ('pending', 'running', 'awaiting_approval', 'rolling_back');

CREATE TABLE playbook_step_runs (
    execution_id     uuid        NOT NULL REFERENCES playbook_executions (execution_id),
    step_index       integer     NOT NULL CHECK (step_index >= 0),
    step_id          text        NOT NULL,
    action           text        NOT NULL,
    state            text        NOT NULL CHECK (state IN (
                         'pending', 'running', 'succeeded', 'failed', 'skipped', 'rolled_back', 'rollback_failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    idempotency_key  bytea       NOT NULL CHECK (octet_length(idempotency_key) = 32),
    params_sha256    bytea,
    skip_reason      text,
    output           jsonb,
    error_class      text        CHECK (error_class IN ('transient', 'permanent', 'timeout', 'cancelled')),
    error            text,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (execution_id, step_index)
);

-- One gate per step that needs approval; votes below.
CREATE TABLE playbook_approval_gates (
    execution_id   uuid        NOT NULL REFERENCES playbook_executions (execution_id),
    step_index     integer     NOT NULL,
    risk           text        NOT NULL CHECK (risk IN ('low', 'moderate', 'high', 'critical')),
    required       integer     NOT NULL CHECK (required BETWEEN 1 AND 2),
    state          text        NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    context        jsonb       NOT NULL,
    opened_at      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    resolved_at    timestamptz,
    PRIMARY KEY (execution_id, step_index)
);
CREATE INDEX playbook_approval_gates_pending_idx ON playbook_approval_gates (expires_at) WHERE state = 'pending';

CREATE TABLE playbook_approvals (
    execution_id   uuid        NOT NULL,
    step_index     integer     NOT NULL,
    approver_uid   bigint      NOT NULL,
    verdict        text        NOT NULL CHECK (verdict IN ('approve', 'deny')),
    reason         text        NOT NULL,
    created_at     timestamptz NOT NULL,
    -- One vote per person per gate: the same uid twice can never make dual control.
    PRIMARY KEY (execution_id, step_index, approver_uid),
    FOREIGN KEY (execution_id, step_index) REFERENCES playbook_approval_gates (execution_id, step_index)
);

CREATE TABLE playbook_rollback_states (
    execution_id   uuid        NOT NULL REFERENCES playbook_executions (execution_id),
    step_index     integer     NOT NULL,
    state          text        NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'not_undoable')),
    attempts       integer     NOT NULL DEFAULT 0,
    error          text,
    started_at     timestamptz,
    finished_at    timestamptz,
    PRIMARY KEY (execution_id, step_index)
);

-- The caller's nonce, inserted under a UNIQUE constraint in the same transaction as the
-- execution row: the only replay protection that holds under concurrency and across restarts.
CREATE TABLE playbook_nonces (
    nonce          text        PRIMARY KEY,
    used_at        timestamptz NOT NULL,
    execution_id   uuid
);
CREATE INDEX playbook_nonces_used_at_idx ON playbook_nonces (used_at);

-- SAFE-HALT history: the active halt is the row with resolved_at IS NULL (at most one).
CREATE TABLE playbook_safe_halt_state (
    halt_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    is_active      boolean     NOT NULL,
    node_id        text        NOT NULL,
    execution_id   uuid,
    rollback_id    text,
    error_message  text        NOT NULL,
    entered_at     timestamptz NOT NULL,
    resolved_at    timestamptz,
    resolved_by    bigint,
    reason         text,
    CHECK (is_active = (resolved_at IS NULL))
);
CREATE UNIQUE INDEX playbook_safe_halt_one_active_idx ON playbook_safe_halt_state (is_active) WHERE is_active;

-- Append-only, hash-chained evidence: one chain per node.
-- hash = SHA-256(prev_hash || canonical bytes of the row); see src/store/audit.rs.
CREATE TABLE playbook_audit_log (
    node_id        text        NOT NULL,
    seq            bigint      NOT NULL CHECK (seq >= 1),
    prev_hash      bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (octet_length(hash) = 32),
    event_type     text        NOT NULL,
    event_data     jsonb       NOT NULL,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (node_id, seq)
);
CREATE INDEX playbook_audit_log_created_idx ON playbook_audit_log (created_at);
CREATE INDEX playbook_audit_log_execution_idx ON playbook_audit_log ((event_data ->> 'execution_id'))
    WHERE event_data ? 'execution_id';

CREATE FUNCTION playbook_audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'playbook_audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER playbook_audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON playbook_audit_log
    FOR EACH ROW EXECUTE FUNCTION playbook_audit_log_refuse_change();
CREATE TRIGGER playbook_audit_log_no_truncate
    BEFORE TRUNCATE ON playbook_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION playbook_audit_log_refuse_change();

-- Signed chain heads, so cutting off the tail of a chain is detectable.
CREATE TABLE audit_checkpoints (
    node_id        text        NOT NULL,
    seq            bigint      NOT NULL,
    hash           bytea       NOT NULL CHECK (octet_length(hash) = 32),
    key_id         text        NOT NULL,
    signature      bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (node_id, seq)
);
CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION playbook_audit_log_refuse_change();
