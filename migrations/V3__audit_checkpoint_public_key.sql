-- Signed checkpoints carry the public key that signed them (SubjectPublicKeyInfo DER), so a
-- verifier can check each signature from the database alone; `key_id` is the hex SHA-256 of
-- that DER, and `audit verify --trusted-node-key` pins it. Nullable only because rows written
-- before this migration have none: a checkpoint without a key fails verification.
ALTER TABLE audit_checkpoints ADD COLUMN public_key bytea;

-- V1 refused UPDATE and DELETE on checkpoints; TRUNCATE would wipe them all at once.
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION playbook_audit_log_refuse_change();
