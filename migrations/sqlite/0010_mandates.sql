-- Payment mandates (issue 14): auto-debit needs a mandate the payment provider confirmed.
-- drivers.auto_debit is now what the gates go by: consent given AND a mandate active. A driver
-- whose consent predates mandates (mandate_status NULL) is asked for one at the next check.
ALTER TABLE drivers ADD COLUMN mandate_ref TEXT;
ALTER TABLE drivers ADD COLUMN mandate_status TEXT
    CHECK (mandate_status IN ('active', 'refused', 'unconfirmed', 'expired', 'revoked'));
ALTER TABLE drivers ADD COLUMN mandate_checked_at TEXT;
