-- Several gateways, one city (issue 15): lot leases. Only PostgreSQL runs several nodes; the
-- tables exist here too so that both engines keep one schema.
CREATE TABLE gateway_nodes (
    node_id  TEXT PRIMARY KEY,
    seen_at  TEXT NOT NULL
);

CREATE TABLE lot_leases (
    lot_id     TEXT PRIMARY KEY REFERENCES lots (id),
    node_id    TEXT NOT NULL,
    token      INTEGER NOT NULL CHECK (token > 0),
    expires_at TEXT NOT NULL
);

CREATE TABLE lot_lease_history (
    lot_id      TEXT NOT NULL REFERENCES lots (id),
    token       INTEGER NOT NULL,
    node_id     TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    released_at TEXT,
    PRIMARY KEY (lot_id, token)
);
