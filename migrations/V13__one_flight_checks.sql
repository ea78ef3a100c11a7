-- One-flight writes (issue 16): the audit writer may send a transaction's statements, its audit
-- INSERT and its COMMIT in one flight, the records written before the statements' outcomes are
-- known. That is sound only if every such statement fails, and so aborts the transaction, unless
-- it did exactly what the records say. Each one ends in a call of this function on what it did:
-- `ok` false (or NULL) raises, the COMMIT behind it becomes a ROLLBACK, and the writer writes the
-- transaction again the ordinary way, where the statement's outcome decides the records
-- (src/store/audit.rs, `write_in_one_flight`).
--
-- VOLATILE (the default): never folded by the planner, evaluated once per call. Its own
-- SQLSTATE, so the writer and a reader of the server's log can tell it from other errors.
-- Search path: as in V11, nothing in the body resolves through it.

CREATE FUNCTION playbook_expect(ok boolean, what text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'one-flight write: % did not do what its records say', what
            USING ERRCODE = 'PB001';
    END IF;
    RETURN true;
END;
$$;
