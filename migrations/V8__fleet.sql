-- Fleet (issue #18): many daemons, one per host, on one PostgreSQL.

-- 1. Nodes: one heartbeat row per daemon, written by the daemon itself every
-- fleet.heartbeat_interval_seconds; the status API marks a node stale when its heartbeat is older
-- than fleet.stale_after_seconds. Rows are never deleted: a node's freshness window must keep
-- counting for nonce retention (below) after the node is gone.
CREATE TABLE playbook_nodes (
    node_id              text        PRIMARY KEY CHECK (node_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    version              text        NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    started_at           timestamptz NOT NULL,
    heartbeat_at         timestamptz NOT NULL,
    -- Set by a clean shutdown, cleared by the next start.
    stopped_at           timestamptz,
    chain_head_seq       bigint      NOT NULL CHECK (chain_head_seq >= 0),
    chain_head_hash      bytea       CHECK (octet_length(chain_head_hash) = 32),
    last_checkpoint_seq  bigint      CHECK (last_checkpoint_seq >= 1),
    last_checkpoint_at   timestamptz,
    runs_in_flight       bigint      NOT NULL CHECK (runs_in_flight >= 0),
    -- 'none', 'node' (its own halt) or 'fleet' (the fleet halt, which every node obeys).
    halt                 text        NOT NULL CHECK (halt IN ('none', 'node', 'fleet')),
    -- The node's intake.freshness_seconds: nonce retention keeps a nonce for twice the widest
    -- window of any node, since nonces are fleet-wide.
    freshness_seconds    integer     NOT NULL CHECK (freshness_seconds BETWEEN 1 AND 86400)
);

-- 2. Nonce retention. A nonce used at time u was accepted with |u - issued_at| <= W, so after
-- u + 2W its decision is stale on any node whose window is at most W: the freshness check
-- refuses it before the nonce table is consulted, and the row can go. W is the widest
-- window any node ever registered (or the caller's, if wider). The daemon's role needs no DELETE
-- on playbook_nonces: this function, owned by the schema owner, is the only delete it can make,
-- bounded to one batch per call so that pruning never holds long locks.
CREATE FUNCTION playbook_prune_nonces(window_seconds integer, batch integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    widest integer;
    pruned integer;
BEGIN
    IF window_seconds IS NULL OR window_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'playbook_prune_nonces: window_seconds must be 1..86400, got %', window_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch IS NULL OR batch NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'playbook_prune_nonces: batch must be 1..10000, got %', batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT GREATEST(window_seconds, COALESCE(max(n.freshness_seconds), 0)) INTO widest
        FROM playbook_nodes n;
    DELETE FROM playbook_nonces
     WHERE nonce IN (SELECT old.nonce FROM playbook_nonces old
                      WHERE old.used_at < now() - make_interval(secs => 2 * widest)
                      ORDER BY old.used_at
                      LIMIT batch
                      FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END;
$$;
-- A SECURITY DEFINER function resolves names in a fixed schema (this one), never in one the
-- caller controls.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION playbook_prune_nonces(integer, integer) SET search_path = %I, pg_temp',
                   current_schema());
END;
$$;
REVOKE ALL ON FUNCTION playbook_prune_nonces(integer, integer) FROM PUBLIC;

-- 3. SAFE-HALT changes are announced at commit on channel `playbookd_halt` (payload
-- `scope:node_id`), so every node learns of a fleet halt (or its clearing) within a second; each
-- node also re-reads the halt state on every heartbeat, in case a notification was missed.
CREATE FUNCTION playbook_safe_halt_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('playbookd_halt', NEW.scope || ':' || NEW.node_id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER playbook_safe_halt_state_notify
    AFTER INSERT OR UPDATE ON playbook_safe_halt_state
    FOR EACH ROW EXECUTE FUNCTION playbook_safe_halt_notify();

-- 4. The runtime role's grants (V6) for this schema version: the heartbeat table and the prune
-- function. `playbookd migrate --runtime-role NAME` re-runs it after upgrading.
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
    EXECUTE format('GRANT SELECT, INSERT ON playbook_audit_log, audit_checkpoints TO %s', grantee);
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
