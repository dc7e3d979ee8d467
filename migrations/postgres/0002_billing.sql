-- Leave first, pay later: payment accounts, API keys, charges (one per closed session), invoices
-- and their reminders, payments, refunds, the append-only double-entry ledger, and settlements.

ALTER TABLE drivers ADD COLUMN payment_account TEXT;
-- The enrolled plate that earned a session leave-first (the exit read's, or the entry's).
ALTER TABLE sessions ADD COLUMN billed_plate TEXT;
ALTER TABLE drivers ADD COLUMN suspended_at TIMESTAMPTZ;

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('platform_admin', 'operator_admin', 'operator_viewer', 'driver', 'navigation_app')),
    operator_id  TEXT REFERENCES operators (id),
    driver_id    UUID REFERENCES drivers (id),
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);

-- Exactly one charge per closed session (the UNIQUE session_id is the guarantee).
CREATE TABLE charges (
    id               UUID PRIMARY KEY,
    session_id       UUID NOT NULL UNIQUE REFERENCES sessions (id),
    operator_id      TEXT NOT NULL,
    lot_id           TEXT NOT NULL,
    local_day        TEXT NOT NULL,
    driver_id        UUID REFERENCES drivers (id),
    account          TEXT,
    amount_minor     BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency         TEXT NOT NULL,
    method           TEXT NOT NULL CHECK (method IN ('auto_debit', 'exit_payment')),
    -- exit_pending: an exit payment in flight; it keeps auto-debit away from the session.
    status           TEXT NOT NULL CHECK (status IN ('pending', 'unknown', 'succeeded', 'declined', 'waived', 'no_account', 'exit_pending')),
    provider         TEXT,
    provider_ref     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    locked_by        TEXT,
    locked_until     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX charges_due ON charges (next_attempt_at) WHERE status IN ('pending', 'unknown');
CREATE INDEX charges_settlement ON charges (lot_id, local_day);
CREATE INDEX sessions_closed ON sessions (status, exited_at);

CREATE TABLE invoices (
    id            UUID PRIMARY KEY,
    charge_id     UUID NOT NULL UNIQUE REFERENCES charges (id),
    driver_id     UUID REFERENCES drivers (id),
    amount_minor  BIGINT NOT NULL CHECK (amount_minor > 0),
    currency      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'paid', 'written_off')),
    due_at        TIMESTAMPTZ NOT NULL,
    paid_at       TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX invoices_open ON invoices (due_at) WHERE status = 'open';
CREATE INDEX invoices_driver ON invoices (driver_id, status);

-- The notification outbox: each kind of notice at most once per invoice.
CREATE TABLE notifications (
    id          UUID PRIMARY KEY,
    driver_id   UUID REFERENCES drivers (id),
    invoice_id  UUID REFERENCES invoices (id),
    kind        TEXT NOT NULL CHECK (kind IN ('invoice_created', 'payment_reminder', 'invoice_overdue', 'suspended', 'reinstated')),
    created_at  TIMESTAMPTZ NOT NULL,
    sent_at     TIMESTAMPTZ
);
CREATE UNIQUE INDEX notifications_once ON notifications (invoice_id, kind);

-- Payments made through the API (an invoice, or a held exit), idempotent by the client's key.
CREATE TABLE payments (
    id               UUID PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('invoice', 'exit')),
    invoice_id       UUID REFERENCES invoices (id),
    session_id       UUID REFERENCES sessions (id),
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('succeeded', 'declined', 'pending')),
    provider_ref     TEXT,
    driver_id        UUID,
    created_at       TIMESTAMPTZ NOT NULL
);

-- At most one payment in flight or made per invoice and per held exit.
CREATE UNIQUE INDEX payments_one_per_invoice ON payments (invoice_id) WHERE invoice_id IS NOT NULL AND status <> 'declined';
CREATE UNIQUE INDEX payments_one_per_exit ON payments (session_id) WHERE session_id IS NOT NULL AND status <> 'declined';

CREATE TABLE refunds (
    id               UUID PRIMARY KEY,
    charge_id        UUID NOT NULL REFERENCES charges (id),
    idempotency_key  TEXT NOT NULL UNIQUE,
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);

-- The double-entry journal: an entry is the lines sharing an entry_id; they sum to zero.
-- Rows are never updated or deleted; a correction is a new entry.
CREATE TABLE ledger (
    entry_id      UUID NOT NULL,
    line          SMALLINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('fee', 'collection', 'payment', 'refund', 'write_off')),
    reference     UUID NOT NULL,
    account       TEXT NOT NULL,
    amount_minor  BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (entry_id, line),
    UNIQUE (kind, reference, line)
);
CREATE INDEX ledger_reference ON ledger (reference);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are never updated or deleted';
END
$$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TABLE settlements (
    operator_id        TEXT NOT NULL,
    lot_id             TEXT NOT NULL,
    day                TEXT NOT NULL,
    currency           TEXT NOT NULL,
    sessions           BIGINT NOT NULL,
    gross_minor        BIGINT NOT NULL,
    collected_minor    BIGINT NOT NULL,
    outstanding_minor  BIGINT NOT NULL,
    refunded_minor     BIGINT NOT NULL,
    computed_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (lot_id, day, currency)
);

-- Writes the store could not make (a bug, a constraint the platform broke): kept for an operator
-- to look at, so that one bad event neither blocks the others nor disappears.
CREATE TABLE dead_letters (
    id          UUID PRIMARY KEY,
    writes      TEXT NOT NULL,
    error       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
