-- A receipt proves a plate once (issue 14 review): the payment it names is kept on the claim it
-- proved, and no other claim can use it again.
ALTER TABLE plate_claims ADD COLUMN receipt UUID;
CREATE UNIQUE INDEX plate_claims_receipt ON plate_claims (receipt) WHERE receipt IS NOT NULL;
