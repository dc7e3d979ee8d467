-- Closed sessions waiting for their charge: written in the transaction that closes a session,
-- consumed by the charging workers. It stays as small as the backlog, so finding what to charge
-- never walks the history of every session.
CREATE TABLE charge_queue (
    session_id  UUID PRIMARY KEY REFERENCES sessions (id),
    queued_at   TIMESTAMPTZ NOT NULL
);

INSERT INTO charge_queue (session_id, queued_at)
SELECT s.id, s.updated_at FROM sessions s
WHERE s.status = 'closed' AND NOT EXISTS (SELECT 1 FROM charges c WHERE c.session_id = s.id);
