-- Lanes that decide alone while the platform cannot answer (issue 16).

-- How a lane lets out a car its standing list does not name.
ALTER TABLE lots ADD COLUMN offline_policy TEXT NOT NULL DEFAULT 'open_and_invoice'
    CHECK (offline_policy IN ('open_and_invoice', 'hold_for_attendant'));

-- A read the lane answered alone, recorded from its `offline` report.
ALTER TABLE gate_reads ADD COLUMN decided_offline BOOLEAN NOT NULL DEFAULT FALSE;

-- What a plate owes with nobody enrolled to bill: collected when the car is held at an exit
-- again (the hold's amount includes it, `owed_minor`).
ALTER TABLE invoices ADD COLUMN plate TEXT;
ALTER TABLE gate_reads ADD COLUMN owed_minor BIGINT;
CREATE INDEX invoices_plate ON invoices (plate) WHERE plate IS NOT NULL AND status = 'open';

-- The lane's decision and the platform's differ: an operator looks.
ALTER TABLE review_items DROP CONSTRAINT review_items_kind_check;
ALTER TABLE review_items ADD CONSTRAINT review_items_kind_check CHECK (kind IN
    ('exit_without_entry', 'low_confidence_match', 'missed_exit', 'no_plate', 'unpriced', 'offline_conflict'));
