-- Plate ownership (issue 14): enrolling a plate makes a claim; the plate joins the driver's
-- account (driver_plates) only once the claim is proven (the vehicle register, a receipt from
-- that plate's held exit) or an operator approves it. A proven claim on a plate another driver
-- holds is disputed: an operator decides, and not while that driver owes.
CREATE TABLE plate_claims (
    id           BLOB PRIMARY KEY,
    driver_id    BLOB NOT NULL REFERENCES drivers (id),
    plate        TEXT NOT NULL,
    plate_color  TEXT,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'disputed', 'granted', 'rejected')),
    -- How it was proven: NULL until it is.
    proof        TEXT CHECK (proof IN ('registration', 'receipt', 'operator')),
    created_at   TEXT NOT NULL,
    decided_at   TEXT,
    reason       TEXT NOT NULL DEFAULT ''
);
-- One live claim per driver and plate; the operators' queue.
CREATE UNIQUE INDEX plate_claims_live ON plate_claims (driver_id, plate)
    WHERE status IN ('pending', 'disputed');
CREATE INDEX plate_claims_queue ON plate_claims (status, created_at);
CREATE INDEX plate_claims_driver ON plate_claims (driver_id);
