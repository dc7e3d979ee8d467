-- Several gateways, one city (issue 15): each lot is owned by one node at a time, by a lease in
-- the database. The token rises with every change of owner; a node writes for a lot only while
-- the lease it holds carries its token (fencing: a node that was paused and lost its lots cannot
-- write for them when it wakes). Times are the database's clock, never a node's.
CREATE TABLE gateway_nodes (
    node_id  TEXT PRIMARY KEY,
    seen_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE lot_leases (
    lot_id     TEXT PRIMARY KEY REFERENCES lots (id),
    node_id    TEXT NOT NULL,
    token      BIGINT NOT NULL CHECK (token > 0),
    expires_at TIMESTAMPTZ NOT NULL
);

-- Every lease ever held: who owned each lot from when to when (released_at: given up, or the
-- expiry of a lease another node took over). The proof that a lot had one owner at a time.
CREATE TABLE lot_lease_history (
    lot_id      TEXT NOT NULL REFERENCES lots (id),
    token       BIGINT NOT NULL,
    node_id     TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ,
    PRIMARY KEY (lot_id, token)
);
