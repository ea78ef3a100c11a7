-- The daemon connects as the role that owns this schema. Take from it (and from everyone) every
-- privilege on the evidence except reading and appending: an UPDATE, DELETE or TRUNCATE is then
-- refused by the privilege system before the append-only triggers even run. A role can grant
-- itself privileges back and a superuser bypasses both, so the daemon must never run as a
-- superuser, and `audit verify` with a pinned node key is the final check.
REVOKE ALL ON playbook_audit_log, audit_checkpoints FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON playbook_audit_log, audit_checkpoints FROM CURRENT_USER;
GRANT SELECT, INSERT ON playbook_audit_log, audit_checkpoints TO CURRENT_USER;
