-- Pictures of review cases (issue 18): an ANPR camera's pictures are kept only when its lot
-- enables it (lots.review_pictures) and only for a read that opened a review case, so a person
-- can look at the car; they are deleted with the plate retention period (privacy job).
ALTER TABLE lots ADD COLUMN review_pictures BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE review_pictures (
    review_id     UUID NOT NULL REFERENCES review_items (id),
    n             INTEGER NOT NULL CHECK (n >= 0),
    content_type  TEXT NOT NULL,
    picture       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (review_id, n)
);
CREATE INDEX review_pictures_age ON review_pictures (created_at);
CREATE INDEX review_items_event ON review_items (lot_id, event_id) WHERE event_id IS NOT NULL;
-- An ANPR read sent to a node that does not run its lot waits for the owner's record of it.
CREATE INDEX gate_reads_event ON gate_reads (lot_id, event_id);
