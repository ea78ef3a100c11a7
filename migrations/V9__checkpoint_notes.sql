-- Issue 24. Each checkpoint the daemon signs also stores its C2SP signed note (tlog-checkpoint
-- body: origin, tree size, RFC 6962 root, chain head; signed-note signature by the node key), so
-- the note a witness, the status API or a bundle shows is the one signed at the time. Nullable:
-- checkpoints signed before this migration have none and verify as before.
ALTER TABLE audit_checkpoints ADD COLUMN note text;

-- The runtime role's grants become data: one row per GRANT, which playbookd_grant_runtime loops
-- over. A later migration that adds a table INSERTs its row here instead of copying the function
-- body again (V6 created it, V8 copied it). `objects` is the ON clause's target with its kind
-- (`TABLE a, b`, `FUNCTION f(integer)`); only the owner can write this table, and nobody else
-- may read it.
CREATE TABLE playbookd_runtime_grants (
    position   integer PRIMARY KEY,
    privileges text    NOT NULL CHECK (privileges ~ '^[A-Z]+(, [A-Z]+)*$'),
    objects    text    NOT NULL CHECK (objects ~ '^(TABLE|FUNCTION) '),
    why        text    NOT NULL
);
REVOKE ALL ON playbookd_runtime_grants FROM PUBLIC;

-- Exactly the grants of V8's function, in its order.
INSERT INTO playbookd_runtime_grants (position, privileges, objects, why) VALUES
    (10, 'SELECT, INSERT', 'TABLE playbook_audit_log, audit_checkpoints',
     'Evidence: read and append. No UPDATE, DELETE, TRUNCATE, TRIGGER or REFERENCES.'),
    (20, 'SELECT, INSERT', 'TABLE playbook_versions, playbook_version_signatures, playbook_nonces, playbook_approvals',
     'Facts recorded once: versions seen, their signatures, nonces used, approvers'' votes.'),
    (30, 'SELECT, INSERT, UPDATE', 'TABLE playbook_executions, playbook_step_runs, playbook_approval_gates, playbook_rollback_states, playbook_safe_halt_state',
     'State changed by guarded transitions (src/store/): runs, steps, gates, undos, halts.'),
    (40, 'SELECT, INSERT, UPDATE', 'TABLE playbook_nodes',
     'Fleet (V8): each daemon upserts its own heartbeat row.'),
    (50, 'EXECUTE', 'FUNCTION playbook_prune_nonces(integer, integer)',
     'Fleet (V8): nonces are deleted only through this SECURITY DEFINER function, never directly.'),
    (60, 'SELECT', 'TABLE refinery_schema_history',
     'The daemon refuses to start on a schema older or newer than the one it was built for.');

CREATE OR REPLACE FUNCTION playbookd_grant_runtime(runtime regrole) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    grantee text := runtime::text; -- regrole prints as a quoted identifier where needed
    item record;
BEGIN
    IF runtime IS NULL THEN
        RAISE EXCEPTION 'no runtime role given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_has_role(runtime, current_user, 'MEMBER') THEN
        RAISE EXCEPTION 'runtime role % is the owner role % or a member of it: it would own the evidence',
            grantee, current_user USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE oid = runtime) THEN
        RAISE EXCEPTION 'runtime role % is a superuser or may create roles: it could grant itself anything',
            grantee USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Start from nothing: whatever this role was granted on the schema before goes.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %s', grantee);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %s', grantee);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM %s', grantee);
    EXECUTE format('REVOKE CREATE ON SCHEMA public FROM %s', grantee);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %s', grantee);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %s', current_database(), grantee);
    -- The rows are the owner's own (the CHECKs keep them to GRANT syntax); a failing GRANT
    -- aborts the whole call, so the role never ends up with half its privileges.
    FOR item IN SELECT privileges, objects FROM playbookd_runtime_grants ORDER BY position LOOP
        EXECUTE format('GRANT %s ON %s TO %s', item.privileges, item.objects, grantee);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION playbookd_grant_runtime(regrole) FROM PUBLIC;
