//! Devices as operators manage them: registered with fresh credentials, rotated, revoked. The
//! registry is reloaded by the caller after every change, so the broker and ingest see it at once.

use chrono::{DateTime, Utc};
use parkflow_protocol::{BayId, DeviceId, GateId, GateReason, LotId};
use serde::Serialize;

use parkflow_db::query;

use super::{Db, StoreError, db_time};
use crate::registry::{DeviceKind, password_hash};

/// A device as the API shows it: never its password or secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct DeviceView {
    pub id: String,
    pub kind: String,
    pub lot_id: Option<String>,
    pub gate_id: Option<String>,
    pub bay_id: Option<String>,
    pub mqtt_username: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// A gate camera whose clock is off: when its latest read was refused for its time (and
    /// answered `hold`, `device_clock`). Cleared by the next read with a good clock.
    #[serde(with = "parkflow_protocol::time::rfc3339::option")]
    pub clock_fault_at: Option<DateTime<Utc>>,
}

/// The columns of a [`DeviceView`]. A camera's clock fault is read from its gate's reads (the
/// one record of what it sent), so nothing else has to keep it.
fn columns() -> String {
    format!(
        "id, CASE WHEN EXISTS (SELECT 1 FROM anpr_cameras a WHERE a.device_id = devices.id) \
             THEN 'anpr_http' ELSE kind END AS kind, lot_id, gate_id, bay_id, mqtt_username, \
         created_at, revoked_at, \
         (SELECT MAX(r.received_at) FROM gate_reads r \
          WHERE r.lot_id = devices.lot_id AND r.gate_id = devices.gate_id AND r.reason = '{clock}' \
            AND NOT EXISTS (SELECT 1 FROM gate_reads g WHERE g.lot_id = r.lot_id \
              AND g.gate_id = r.gate_id AND g.received_at > r.received_at AND g.reason <> '{clock}')) \
         AS clock_fault_at",
        clock = GateReason::DeviceClock.as_str()
    )
}

/// The kind a [`DeviceView`] shows for an off-the-shelf ANPR camera (a gate camera that speaks
/// HTTP; `devices.kind` holds `gate_camera`).
pub(crate) const ANPR_KIND: &str = "anpr_http";

/// An off-the-shelf ANPR camera's own settings, to register with it.
pub(crate) struct NewAnpr {
    pub vendor: crate::anpr::Vendor,
    pub control: Option<crate::anpr::barrier::HttpControl>,
    pub allow_from: Vec<ipnet::IpNet>,
}

/// Stores an ANPR camera's settings (its control password sealed like a device secret).
async fn insert_anpr(
    db: &Db,
    tx: &mut parkflow_db::Tx,
    id: &DeviceId,
    anpr: &NewAnpr,
    password: &str,
) -> Result<(), StoreError> {
    use secrecy::ExposeSecret;
    let control = anpr.control.as_ref();
    query(
        "INSERT INTO anpr_cameras (device_id, vendor, control, control_url, control_username,
             control_password, allow_from, digest_ha1)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.as_str())
    .bind(anpr.vendor.as_str())
    .bind(if control.is_some() { "http" } else { "mqtt" })
    .bind(control.map(|c| c.url.as_str()))
    .bind(control.and_then(|c| c.username.as_deref()))
    .bind(
        control
            .and_then(|c| c.password.as_ref())
            .map(|p| db.seal(id.as_str(), p.expose_secret())),
    )
    .bind(
        anpr.allow_from
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
    .bind(db.seal(
        id.as_str(),
        &crate::anpr::digest::ha1(id.as_str(), password),
    ))
    .execute(tx)
    .await
    .map(drop)
}

/// A device to register, with its credentials in clear (stored: the password hashed).
pub(crate) struct NewDevice<'a> {
    pub id: &'a DeviceId,
    pub kind: DeviceKind,
    pub lot: &'a LotId,
    pub gate: Option<&'a GateId>,
    pub bay: Option<&'a BayId>,
    pub password: &'a str,
    pub secret: &'a str,
    /// An off-the-shelf ANPR camera's settings (a gate camera that speaks HTTP).
    pub anpr: Option<&'a NewAnpr>,
}

/// Why a device could not be registered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("a device with this id exists")]
    Exists,
    #[error("the gate has a camera already")]
    GateTaken,
    #[error("the lot has no such gate")]
    UnknownGate,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers a device; its id is also its MQTT username.
///
/// A gate camera's gate row is written first: a gate being removed at the same moment either
/// waits for this registration (and then finds the camera and stays) or is gone before it (and
/// the camera is refused), never a camera on a removed gate.
pub(crate) async fn register(
    db: &Db,
    device: &NewDevice<'_>,
    now: DateTime<Utc>,
) -> Result<(), DeviceError> {
    let mut tx = db.begin_write().await?;
    if let Some(gate) = device.gate {
        let locked = query("UPDATE gates SET direction = direction WHERE lot_id = $1 AND id = $2")
            .bind(device.lot.as_str())
            .bind(gate.as_str())
            .execute(&mut tx)
            .await?;
        if locked == 0 {
            return Err(DeviceError::UnknownGate);
        }
    }
    let inserted = query(
        "INSERT INTO devices (id, kind, lot_id, gate_id, bay_id, mqtt_username, mqtt_password_hash, secret, created_at)
         VALUES ($1, $2, $3, $4, $5, $1, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(device.id.as_str())
    .bind(device.kind.as_str())
    .bind(device.lot.as_str())
    .bind(device.gate.map(GateId::as_str))
    .bind(device.bay.map(BayId::as_str))
    .bind(password_hash(device.password))
    .bind(db.seal(device.id.as_str(), device.secret))
    .bind(db_time(now))
    .execute(&mut tx)
    .await?;
    if inserted == 1
        && let Some(anpr) = device.anpr
    {
        insert_anpr(db, &mut tx, device.id, anpr, device.password).await?;
    }
    tx.commit().await?;
    if inserted == 1 {
        return Ok(());
    }
    // Nothing inserted: the id (or username) is taken, or the gate has a live camera.
    if device_by_id(db, device.id.as_str()).await?.is_some() {
        Err(DeviceError::Exists)
    } else {
        Err(DeviceError::GateTaken)
    }
}

async fn device_by_id(db: &Db, id: &str) -> Result<Option<DeviceView>, StoreError> {
    let sql = format!(
        "SELECT {} FROM devices WHERE id = $1 OR mqtt_username = $1",
        columns()
    );
    query(sql).bind(id).fetch_optional(db).await
}

/// One device.
pub(crate) async fn device(db: &Db, id: &DeviceId) -> Result<Option<DeviceView>, StoreError> {
    let sql = format!("SELECT {} FROM devices WHERE id = $1", columns());
    query(sql).bind(id.as_str()).fetch_optional(db).await
}

/// A lot's devices, by id.
pub(crate) async fn of_lot(
    db: &Db,
    lot: &LotId,
    limit: u32,
) -> Result<Vec<DeviceView>, StoreError> {
    let sql = format!(
        "SELECT {} FROM devices WHERE lot_id = $1 ORDER BY id LIMIT $2",
        columns()
    );
    query(sql)
        .bind(lot.as_str())
        .bind(i64::from(limit))
        .fetch_all(db)
        .await
}

/// Gives a live device new credentials; the old ones stop working with the next registry load.
/// `false` if the device is unknown or revoked.
pub(crate) async fn rotate(
    db: &Db,
    id: &DeviceId,
    password: &str,
    secret: &str,
) -> Result<bool, StoreError> {
    let mut tx = db.begin_write().await?;
    let changed = query(
        "UPDATE devices SET mqtt_password_hash = $2, secret = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.as_str())
    .bind(password_hash(password))
    .bind(db.seal(id.as_str(), secret))
    .execute(&mut tx)
    .await?;
    // An ANPR camera's Digest answers are checked against its new password from now on.
    query("UPDATE anpr_cameras SET digest_ha1 = $2 WHERE device_id = $1")
        .bind(id.as_str())
        .bind(db.seal(
            id.as_str(),
            &crate::anpr::digest::ha1(id.as_str(), password),
        ))
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(changed == 1)
}

/// Seals the device secrets stored in clear (written before a secrets key was configured), in
/// batches; how many. Runs at start when the platform has a secrets key.
pub(crate) async fn seal_clear_secrets(db: &Db) -> Result<u64, StoreError> {
    const BATCH: i64 = 5_000;
    let mut sealed = 0;
    loop {
        let clear: Vec<(String, String)> = query(
            "SELECT id, secret FROM devices WHERE secret NOT LIKE 'enc:v1:%' ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(db)
        .await?;
        if clear.is_empty() {
            return Ok(sealed);
        }
        let mut tx = db.begin_write().await?;
        for (id, secret) in &clear {
            query("UPDATE devices SET secret = $2 WHERE id = $1 AND secret = $3")
                .bind(id.as_str())
                .bind(db.seal(id, secret))
                .bind(secret.as_str())
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        sealed += clear.len() as u64;
    }
}

/// Revokes a device (idempotent).
pub(crate) async fn revoke(db: &Db, id: &DeviceId, now: DateTime<Utc>) -> Result<(), StoreError> {
    query("UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id.as_str())
        .bind(db_time(now))
        .execute(db)
        .await
        .map(drop)
}
