-- Event-driven gates (issue #16). A run parked at an approval gate no longer re-reads its gate
-- every few seconds: it waits for a vote, a cancel or its expiry in-process, and for any other
-- change of its gate row's state or deadline (made by another process or node) through this
-- notification. The payload names the gate only (execution id / step index): no context, no
-- secret.
CREATE FUNCTION playbook_approval_gate_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('playbookd_gate', NEW.execution_id::text || '/' || NEW.step_index::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER playbook_approval_gates_notify
    AFTER UPDATE OF state, expires_at ON playbook_approval_gates
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
    EXECUTE FUNCTION playbook_approval_gate_notify();
