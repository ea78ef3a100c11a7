-- Executor bookkeeping: why a run is being rolled back, and a durable cancel request, so a
-- restart continues a rollback (or a cancel) exactly where it stood.
ALTER TABLE playbook_executions
    ADD COLUMN rollback_cause text CHECK (rollback_cause IN ('failed', 'timed_out', 'cancelled', 'rejected')),
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN binding jsonb NOT NULL DEFAULT '{}'::jsonb;
