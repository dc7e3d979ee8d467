-- The audit trail: who did what to which object, when and why — operators' corrections and
-- manual barrier openings. Append-only, like the ledger.

CREATE TABLE audit_log (
    id           UUID PRIMARY KEY,
    at           TIMESTAMPTZ NOT NULL,
    actor_role   TEXT NOT NULL,
    actor_key    UUID,
    operator_id  TEXT,
    action       TEXT NOT NULL,
    object       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    details      TEXT
);
CREATE INDEX audit_log_operator_at ON audit_log (operator_id, at);
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are never updated or deleted';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
