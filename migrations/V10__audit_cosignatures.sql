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

-- The runtime role reads and appends cosignatures, nothing more (V9's grant table; `playbookd
-- migrate --runtime-role NAME` applies it).
INSERT INTO playbookd_runtime_grants (position, privileges, objects, why) VALUES
    (70, 'SELECT, INSERT', 'TABLE audit_cosignatures',
     'Witness cosignatures (V10): read and append, like the other evidence.');
