-- Off-the-shelf ANPR cameras (issue 18): a gate camera (devices.kind 'gate_camera') that pushes
-- its vendor's plate events over HTTP (POST /v1/anpr/{device}, HTTP Basic with its id and
-- password) and whose barrier opens through the vendor's HTTP call, or through a ParkFlow MQTT
-- barrier controller on the gate's command topic ('mqtt').
CREATE TABLE anpr_cameras (
    device_id         TEXT PRIMARY KEY REFERENCES devices (id),
    vendor            TEXT NOT NULL
        CHECK (vendor IN ('hikvision', 'dahua', 'axis', 'platerecognizer', 'openalpr')),
    control           TEXT NOT NULL CHECK (control IN ('http', 'mqtt')),
    control_url       TEXT,
    control_username  TEXT,
    -- Sealed like device secrets (--secrets-key).
    control_password  TEXT,
    -- HTTP Digest (RFC 7616, MD5): MD5(device:parkflow:password), sealed like device secrets.
    digest_ha1        TEXT,
    -- Networks it may send from, comma-separated CIDRs (any when empty).
    allow_from        TEXT NOT NULL DEFAULT '',
    CHECK (control = 'mqtt' OR control_url IS NOT NULL)
);
