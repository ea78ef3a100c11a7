-- Two roles (issue 21). The schema belongs to an owner role, which runs the migrations and is
-- never used by the daemon; the daemon connects as a runtime role that owns nothing and holds
-- exactly the privileges granted here. A role that owns a table can grant itself DELETE and
-- disable the append-only triggers, so the daemon must never be that role (it checks at start:
-- src/store/privileges.rs).
--
-- The grant list lives beside the schema, so that a migration adding a table updates it
-- (CREATE OR REPLACE) and `playbookd migrate --runtime-role NAME` (or an operator, by hand:
-- SELECT playbookd_grant_runtime('NAME')) always grants what this schema version needs.
CREATE FUNCTION playbookd_grant_runtime(runtime regrole) RETURNS void
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
    EXECUTE format('GRANT SELECT, INSERT ON playbook_audit_log, audit_checkpoints TO %s', grantee);
    -- Facts recorded once: versions seen, their signatures, nonces used, approvers' votes.
    EXECUTE format('GRANT SELECT, INSERT ON playbook_versions, playbook_version_signatures, '
                   'playbook_nonces, playbook_approvals TO %s', grantee);
    -- State changed by guarded transitions (src/store/): runs, steps, gates, undos, halts.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON playbook_executions, playbook_step_runs, '
                   'playbook_approval_gates, playbook_rollback_states, playbook_safe_halt_state TO %s',
                   grantee);
    -- The daemon refuses to start on a schema older or newer than the one it was built for.
    EXECUTE format('GRANT SELECT ON refinery_schema_history TO %s', grantee);
END;
$$;
REVOKE ALL ON FUNCTION playbookd_grant_runtime(regrole) FROM PUBLIC;

-- Nobody but the owner and the roles granted above reads or writes any table here.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
