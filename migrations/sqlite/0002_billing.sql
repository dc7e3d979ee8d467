-- Leave first, pay later: payment accounts, API keys, charges (one per closed session), invoices
-- and their reminders, payments, refunds, the append-only double-entry ledger, and settlements.

ALTER TABLE drivers ADD COLUMN payment_account TEXT;
-- The enrolled plate that earned a session leave-first (the exit read's, or the entry's).
ALTER TABLE sessions ADD COLUMN billed_plate TEXT;
ALTER TABLE drivers ADD COLUMN suspended_at TEXT;

CREATE TABLE api_keys (
    id           BLOB PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('platform_admin', 'operator_admin', 'operator_viewer', 'driver', 'navigation_app')),
    operator_id  TEXT REFERENCES operators (id),
    driver_id    BLOB REFERENCES drivers (id),
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

-- Exactly one charge per closed session (the UNIQUE session_id is the guarantee).
CREATE TABLE charges (
    id               BLOB PRIMARY KEY,
    session_id       BLOB NOT NULL UNIQUE REFERENCES sessions (id),
    operator_id      TEXT NOT NULL,
    lot_id           TEXT NOT NULL,
    local_day        TEXT NOT NULL,
    driver_id        BLOB REFERENCES drivers (id),
    account          TEXT,
    amount_minor     INTEGER NOT NULL CHECK (amount_minor >= 0),
    currency         TEXT NOT NULL,
    method           TEXT NOT NULL CHECK (method IN ('auto_debit', 'exit_payment')),
    -- exit_pending: an exit payment in flight; it keeps auto-debit away from the session.
    status           TEXT NOT NULL CHECK (status IN ('pending', 'unknown', 'succeeded', 'declined', 'waived', 'no_account', 'exit_pending')),
    provider         TEXT,
    provider_ref     TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    locked_by        TEXT,
    locked_until     TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX charges_due ON charges (next_attempt_at) WHERE status IN ('pending', 'unknown');
CREATE INDEX charges_settlement ON charges (lot_id, local_day);
CREATE INDEX sessions_closed ON sessions (status, exited_at);

CREATE TABLE invoices (
    id            BLOB PRIMARY KEY,
    charge_id     BLOB NOT NULL UNIQUE REFERENCES charges (id),
    driver_id     BLOB REFERENCES drivers (id),
    amount_minor  INTEGER NOT NULL CHECK (amount_minor > 0),
    currency      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'paid', 'written_off')),
    due_at        TEXT NOT NULL,
    paid_at       TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX invoices_open ON invoices (due_at) WHERE status = 'open';
CREATE INDEX invoices_driver ON invoices (driver_id, status);

-- The notification outbox: each kind of notice at most once per invoice.
CREATE TABLE notifications (
    id          BLOB PRIMARY KEY,
    driver_id   BLOB REFERENCES drivers (id),
    invoice_id  BLOB REFERENCES invoices (id),
    kind        TEXT NOT NULL CHECK (kind IN ('invoice_created', 'payment_reminder', 'invoice_overdue', 'suspended', 'reinstated')),
    created_at  TEXT NOT NULL,
    sent_at     TEXT
);
CREATE UNIQUE INDEX notifications_once ON notifications (invoice_id, kind);

-- Payments made through the API (an invoice, or a held exit), idempotent by the client's key.
CREATE TABLE payments (
    id               BLOB PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('invoice', 'exit')),
    invoice_id       BLOB REFERENCES invoices (id),
    session_id       BLOB REFERENCES sessions (id),
    amount_minor     INTEGER NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('succeeded', 'declined', 'pending')),
    provider_ref     TEXT,
    driver_id        BLOB,
    created_at       TEXT NOT NULL
);

-- At most one payment in flight or made per invoice and per held exit.
CREATE UNIQUE INDEX payments_one_per_invoice ON payments (invoice_id) WHERE invoice_id IS NOT NULL AND status <> 'declined';
CREATE UNIQUE INDEX payments_one_per_exit ON payments (session_id) WHERE session_id IS NOT NULL AND status <> 'declined';

CREATE TABLE refunds (
    id               BLOB PRIMARY KEY,
    charge_id        BLOB NOT NULL REFERENCES charges (id),
    idempotency_key  TEXT NOT NULL UNIQUE,
    amount_minor     INTEGER NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    created_at       TEXT NOT NULL
);

-- The double-entry journal: an entry is the lines sharing an entry_id; they sum to zero.
-- Rows are never updated or deleted; a correction is a new entry.
CREATE TABLE ledger (
    entry_id      BLOB NOT NULL,
    line          INTEGER NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('fee', 'collection', 'payment', 'refund', 'write_off')),
    reference     BLOB NOT NULL,
    account       TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL,
    currency      TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (entry_id, line),
    UNIQUE (kind, reference, line)
);
CREATE INDEX ledger_reference ON ledger (reference);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger rows are never updated or deleted');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger rows are never updated or deleted');
END;

CREATE TABLE settlements (
    operator_id        TEXT NOT NULL,
    lot_id             TEXT NOT NULL,
    day                TEXT NOT NULL,
    currency           TEXT NOT NULL,
    sessions           INTEGER NOT NULL,
    gross_minor        INTEGER NOT NULL,
    collected_minor    INTEGER NOT NULL,
    outstanding_minor  INTEGER NOT NULL,
    refunded_minor     INTEGER NOT NULL,
    computed_at        TEXT NOT NULL,
    PRIMARY KEY (lot_id, day, currency)
);

-- Writes the store could not make (a bug, a constraint the platform broke): kept for an operator
-- to look at, so that one bad event neither blocks the others nor disappears.
CREATE TABLE dead_letters (
    id          BLOB PRIMARY KEY,
    writes      TEXT NOT NULL,
    error       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
