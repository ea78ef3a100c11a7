-- Witness cosignatures (issue 24): each C2SP tlog-cosignature/v1 a configured witness returned
-- for a checkpoint, verified by the daemon against the witness key before it is stored. The
-- checkpoint text it signs is recomputed from the chain, so only the signature, its timestamp
-- and the witness's key name and ID are kept. Evidence: append-only, like the checkpoints.
CREATE TABLE audit_cosignatures (
    node_id        text        NOT NULL,
    checkpoint_seq bigint      NOT NULL,
    witness_name   text        NOT NULL,
    -- The signed-note key ID, 8 lowercase hex digits.
    key_id         text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{8}$'),
    -- POSIX seconds, as signed; never 0 (tlog-witness).
    timestamp      bigint      NOT NULL CHECK (timestamp > 0),
    signature      bytea       NOT NULL CHECK (octet_length(signature) = 64),
    created_at     timestamptz NOT NULL,
    -- No foreign key to audit_checkpoints: V4 took REFERENCES on the evidence from everyone,
    -- the owner included. The daemon stores a cosignature only for a checkpoint it just read.
    PRIMARY KEY (node_id, checkpoint_seq, witness_name, key_id)
);
CREATE TRIGGER audit_cosignatures_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_cosignatures
    FOR EACH ROW EXECUTE FUNCTION playbook_audit_log_refuse_change();
CREATE TRIGGER audit_cosignatures_no_truncate
    BEFORE TRUNCATE ON audit_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION playbook_audit_log_refuse_change();
REVOKE ALL ON audit_cosignatures FROM PUBLIC;

-- The runtime role's grants (V8) plus SELECT, INSERT on audit_cosignatures.
-- `playbookd migrate --runtime-role NAME` re-runs it after upgrading.
CREATE OR REPLACE FUNCTION playbookd_grant_runtime(runtime regrole) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    grantee text := runtime::text; -- regrole prints as a quoted identifier where needed
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
    -- Evidence: read and append. No UPDATE, DELETE, TRUNCATE, TRIGGER or REFERENCES.
    EXECUTE format('GRANT SELECT, INSERT ON playbook_audit_log, audit_checkpoints, audit_cosignatures TO %s',
                   grantee);
    -- Facts recorded once: versions seen, their signatures, nonces used, approvers' votes.
    EXECUTE format('GRANT SELECT, INSERT ON playbook_versions, playbook_version_signatures, '
                   'playbook_nonces, playbook_approvals TO %s', grantee);
    -- State changed by guarded transitions (src/store/): runs, steps, gates, undos, halts.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON playbook_executions, playbook_step_runs, '
                   'playbook_approval_gates, playbook_rollback_states, playbook_safe_halt_state TO %s',
                   grantee);
    -- Fleet (V8): each daemon upserts its own heartbeat row; nonces are deleted only through
    -- playbook_prune_nonces (SECURITY DEFINER), never directly.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON playbook_nodes TO %s', grantee);
    EXECUTE format('GRANT EXECUTE ON FUNCTION playbook_prune_nonces(integer, integer) TO %s', grantee);
    -- The daemon refuses to start on a schema older or newer than the one it was built for.
    EXECUTE format('GRANT SELECT ON refinery_schema_history TO %s', grantee);
END;
$$;
