-- Drivers' trust (issue 14).

-- Money races: a refund is reserved ('pending') under a lock on its charge before the provider
-- is asked, so two refunds can never both pass the check against what was collected; one the
-- provider refused stays on record as 'refused'. A payment keeps a digest of what was asked
-- under its Idempotency-Key, so the same key with another body is refused.
ALTER TABLE refunds ADD COLUMN status TEXT NOT NULL DEFAULT 'refunded'
    CHECK (status IN ('pending', 'refunded', 'refused'));
ALTER TABLE payments ADD COLUMN request_digest TEXT;

-- Debts stay with the debtor: the driver to bill is fixed on the session when the car leaves
-- (the driver of its plate then), not looked up when the charge is made.
ALTER TABLE sessions ADD COLUMN billed_driver UUID REFERENCES drivers (id);
UPDATE sessions SET billed_driver = (SELECT p.driver_id FROM driver_plates p
                                     WHERE p.plate = COALESCE(sessions.billed_plate, sessions.plate))
WHERE id IN (SELECT session_id FROM charge_queue);

-- Keys: which key issued each key (NULL: the configured platform admin key, or a driver's
-- enrolment); issuing and revoking are also in the audit trail.
ALTER TABLE api_keys ADD COLUMN issued_by UUID REFERENCES api_keys (id);
