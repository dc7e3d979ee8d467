-- Bay occupancy (SPEC §2 occupancy/heartbeat/bridge, §3 on-street sessions, §5 availability).
-- bay_states holds each bay's last applied event (its seq makes replays change nothing) and is
-- what the occupancy state is rebuilt from at start; rows are written only for registered bays.

ALTER TABLE lots ADD COLUMN max_stay_minutes INTEGER CHECK (max_stay_minutes > 0);

CREATE TABLE bay_states (
    lot_id       TEXT NOT NULL,
    bay_id       TEXT NOT NULL,
    occupied     BOOLEAN NOT NULL,
    seq          BIGINT NOT NULL,
    observed_at  TIMESTAMPTZ NOT NULL,
    battery_pct  INTEGER,
    PRIMARY KEY (lot_id, bay_id)
);

-- An on-street stay: opened when the bay goes occupied, its plate attached by bay camera reads
-- (the best confidence wins), closed when the bay goes free. A priced stay is also a `sessions` row
-- with the same id, which billing charges; one without a plate goes to review.
CREATE TABLE bay_sessions (
    id                UUID PRIMARY KEY,
    lot_id            TEXT NOT NULL REFERENCES lots (id),
    bay_id            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('open', 'closed', 'review')),
    started_at        TIMESTAMPTZ NOT NULL,
    ended_at          TIMESTAMPTZ,
    plate             TEXT,
    plate_color       TEXT,
    plate_confidence  DOUBLE PRECISION,
    plate_event_id    TEXT,
    overstay_at       TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE UNIQUE INDEX bay_sessions_one_open_per_bay ON bay_sessions (lot_id, bay_id) WHERE status = 'open';
CREATE INDEX bay_sessions_lot_started ON bay_sessions (lot_id, started_at);

ALTER TABLE sessions ADD COLUMN bay_id TEXT;
ALTER TABLE review_items ADD COLUMN bay_id TEXT;

-- An operator's count of the cars in a gated lot without bay sensors; later entries and exits
-- move it: occupied = occupied_counted + (open sessions now - open_sessions at the count).
CREATE TABLE lot_recounts (
    lot_id         TEXT PRIMARY KEY REFERENCES lots (id),
    occupied       INTEGER NOT NULL CHECK (occupied >= 0),
    open_sessions  INTEGER NOT NULL CHECK (open_sessions >= 0),
    counted_at     TIMESTAMPTZ NOT NULL
);
