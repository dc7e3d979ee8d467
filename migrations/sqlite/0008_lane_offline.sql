-- Lanes that decide alone while the platform cannot answer (issue 16).

-- How a lane lets out a car its standing list does not name.
ALTER TABLE lots ADD COLUMN offline_policy TEXT NOT NULL DEFAULT 'open_and_invoice'
    CHECK (offline_policy IN ('open_and_invoice', 'hold_for_attendant'));

-- A read the lane answered alone, recorded from its `offline` report.
ALTER TABLE gate_reads ADD COLUMN decided_offline INTEGER NOT NULL DEFAULT 0;

-- What a plate owes with nobody enrolled to bill: collected when the car is held at an exit
-- again (the hold's amount includes it, `owed_minor`).
ALTER TABLE invoices ADD COLUMN plate TEXT;
ALTER TABLE gate_reads ADD COLUMN owed_minor INTEGER;
CREATE INDEX invoices_plate ON invoices (plate) WHERE plate IS NOT NULL AND status = 'open';

-- The lane's decision and the platform's differ: an operator looks. SQLite cannot change a
-- CHECK in place: the table is made again with the new kind, rows and index kept.
ALTER TABLE review_items RENAME TO review_items_before_0008;
DROP INDEX review_items_open;
CREATE TABLE review_items (
    id          BLOB PRIMARY KEY,
    lot_id      TEXT NOT NULL REFERENCES lots (id),
    kind        TEXT NOT NULL CHECK (kind IN ('exit_without_entry', 'low_confidence_match', 'missed_exit', 'no_plate', 'unpriced', 'offline_conflict')),
    session_id  BLOB REFERENCES sessions (id),
    gate_id     TEXT,
    event_id    TEXT,
    plate       TEXT,
    score       REAL,
    created_at  TEXT NOT NULL,
    resolved_at TEXT,
    resolution  TEXT,
    bay_id      TEXT
);
INSERT INTO review_items (id, lot_id, kind, session_id, gate_id, event_id, plate, score, created_at, resolved_at, resolution, bay_id)
    SELECT id, lot_id, kind, session_id, gate_id, event_id, plate, score, created_at, resolved_at, resolution, bay_id FROM review_items_before_0008;
DROP TABLE review_items_before_0008;
CREATE INDEX review_items_open ON review_items (lot_id, created_at) WHERE resolved_at IS NULL;
