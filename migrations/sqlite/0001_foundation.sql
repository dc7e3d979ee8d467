-- The foundation: the registry (operators, lots, gates, bays, devices, tariffs, drivers, passes,
-- blocks), parking sessions, every gate read with the decision that answered it, and the review queue.
-- Money is INTEGER minor units; timestamps are UTC.

CREATE TABLE operators (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE lots (
    id           TEXT PRIMARY KEY,
    operator_id  TEXT NOT NULL REFERENCES operators (id),
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('off_street', 'on_street')),
    lat          REAL NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon          REAL NOT NULL CHECK (lon BETWEEN -180 AND 180),
    capacity     INTEGER NOT NULL CHECK (capacity >= 0),
    time_zone    TEXT NOT NULL,
    device_auth  TEXT NOT NULL DEFAULT 'signed' CHECK (device_auth IN ('signed', 'broker')),
    created_at   TEXT NOT NULL
);

CREATE TABLE gates (
    lot_id     TEXT NOT NULL REFERENCES lots (id),
    id         TEXT NOT NULL,
    direction  TEXT NOT NULL CHECK (direction IN ('entry', 'exit', 'both')),
    PRIMARY KEY (lot_id, id)
);

CREATE TABLE bays (
    lot_id  TEXT NOT NULL REFERENCES lots (id),
    id      TEXT NOT NULL,
    PRIMARY KEY (lot_id, id)
);

CREATE TABLE devices (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('gate_camera', 'bay_sensor', 'bay_camera', 'bridge')),
    lot_id              TEXT REFERENCES lots (id),
    gate_id             TEXT,
    bay_id              TEXT,
    mqtt_username       TEXT NOT NULL UNIQUE,
    mqtt_password_hash  TEXT NOT NULL,
    secret              TEXT NOT NULL,
    revoked_at          TEXT,
    created_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX devices_one_camera_per_gate ON devices (lot_id, gate_id) WHERE gate_id IS NOT NULL AND revoked_at IS NULL;

CREATE TABLE tariffs (
    lot_id          TEXT NOT NULL REFERENCES lots (id),
    version         INTEGER NOT NULL,
    effective_from  TEXT NOT NULL,
    definition      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (lot_id, version),
    UNIQUE (lot_id, effective_from)
);

CREATE TABLE drivers (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    auto_debit  INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE driver_plates (
    plate        TEXT PRIMARY KEY,
    driver_id    BLOB NOT NULL REFERENCES drivers (id),
    plate_color  TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX driver_plates_driver ON driver_plates (driver_id);

CREATE TABLE passes (
    id           BLOB PRIMARY KEY,
    lot_id       TEXT NOT NULL REFERENCES lots (id),
    plate        TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('monthly', 'whitelist')),
    valid_from   TEXT NOT NULL,
    valid_until  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    CHECK (valid_until > valid_from)
);
CREATE INDEX passes_lot_plate ON passes (lot_id, plate);

CREATE TABLE blocked_plates (
    lot_id      TEXT NOT NULL REFERENCES lots (id),
    plate       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (lot_id, plate)
);

CREATE TABLE sessions (
    id                BLOB PRIMARY KEY,
    lot_id            TEXT NOT NULL REFERENCES lots (id),
    plate             TEXT NOT NULL,
    plate_color       TEXT,
    status            TEXT NOT NULL CHECK (status IN ('open', 'closed', 'review', 'void')),
    pass_holder       INTEGER NOT NULL,
    entry_gate        TEXT,
    entry_event_id    TEXT,
    entered_at        TEXT NOT NULL,
    exit_gate         TEXT,
    exit_event_id     TEXT,
    exited_at         TEXT,
    exit_match        TEXT CHECK (exit_match IN ('exact', 'fuzzy')),
    exit_match_score  REAL,
    tariff_from       TEXT,
    fee_minor         INTEGER CHECK (fee_minor >= 0),
    currency          TEXT,
    updated_at        TEXT NOT NULL,
    CHECK (status <> 'closed' OR (exited_at IS NOT NULL AND fee_minor IS NOT NULL AND currency IS NOT NULL)),
    CHECK (exited_at IS NULL OR exited_at >= entered_at)
);
CREATE UNIQUE INDEX sessions_one_open_per_plate ON sessions (lot_id, plate) WHERE status = 'open';
CREATE INDEX sessions_lot_entered ON sessions (lot_id, entered_at);
CREATE INDEX sessions_plate ON sessions (plate);

CREATE TABLE gate_reads (
    lot_id            TEXT NOT NULL REFERENCES lots (id),
    gate_id           TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    plate             TEXT NOT NULL,
    plate_color       TEXT,
    confidence        REAL NOT NULL,
    direction         TEXT NOT NULL CHECK (direction IN ('entry', 'exit')),
    observed_at       TEXT NOT NULL,
    received_at       TEXT NOT NULL,
    command_id        BLOB NOT NULL UNIQUE,
    action            TEXT NOT NULL CHECK (action IN ('open', 'hold')),
    reason            TEXT NOT NULL,
    issued_at         TEXT NOT NULL,
    amount_due_minor  INTEGER,
    currency          TEXT,
    pay_url           TEXT,
    session_id        BLOB REFERENCES sessions (id),
    PRIMARY KEY (lot_id, gate_id, event_id)
);
CREATE INDEX gate_reads_received ON gate_reads (received_at);

CREATE TABLE review_items (
    id          BLOB PRIMARY KEY,
    lot_id      TEXT NOT NULL REFERENCES lots (id),
    kind        TEXT NOT NULL CHECK (kind IN ('exit_without_entry', 'low_confidence_match', 'missed_exit', 'no_plate', 'unpriced')),
    session_id  BLOB REFERENCES sessions (id),
    gate_id     TEXT,
    event_id    TEXT,
    plate       TEXT,
    score       REAL,
    created_at  TEXT NOT NULL,
    resolved_at TEXT,
    resolution  TEXT
);
CREATE INDEX review_items_open ON review_items (lot_id, created_at) WHERE resolved_at IS NULL;
