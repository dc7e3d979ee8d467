-- Logins to the web pages (issue 17): the operator console and the driver portal. A person logs
-- in with an API key; the browser keeps only a random token (an HttpOnly cookie), stored here as
-- its SHA-256. The key's hash is kept, not the key, and every request resolves it again, so a
-- revoked key ends its web sessions at once. Forms carry the session's CSRF token.
CREATE TABLE web_sessions (
    token_hash  TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
CREATE INDEX web_sessions_key ON web_sessions (key_hash, created_at);
-- The console's lanes: each gate's last read.
CREATE INDEX gate_reads_lane ON gate_reads (lot_id, gate_id, received_at);
