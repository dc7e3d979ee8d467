-- The audit trail: who did what to which object, when and why — operators' corrections and
-- manual barrier openings. Append-only, like the ledger.

CREATE TABLE audit_log (
    id           BLOB PRIMARY KEY,
    at           TEXT NOT NULL,
    actor_role   TEXT NOT NULL,
    actor_key    BLOB,
    operator_id  TEXT,
    action       TEXT NOT NULL,
    object       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    details      TEXT
);
CREATE INDEX audit_log_operator_at ON audit_log (operator_id, at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit rows are never updated or deleted');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit rows are never updated or deleted');
END;
