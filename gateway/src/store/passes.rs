//! A lot's passes (monthly, whitelist): plates that park free in the lot between two instants
//! (SPEC §4), and its blocked plates. Operators add, list and revoke them; the gate and
//! occupancy actors reload them.

use chrono::{DateTime, Utc};
use parkflow_protocol::{LotId, Plate};
use serde::Serialize;
use uuid::Uuid;

use parkflow_db::query;

use super::audit::{self, AuditEntry};
use super::{Db, StoreError, db_time};

/// A pass as its operator sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct PassView {
    pub id: Uuid,
    pub plate: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub valid_from: DateTime<Utc>,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub valid_until: DateTime<Utc>,
}

/// A pass: `(id, lot, plate, valid_from, valid_until, created_at)`.
pub(super) const INSERT_PASS: &str =
    "INSERT INTO passes (id, lot_id, plate, kind, valid_from, valid_until, created_at)
     VALUES ($1, $2, $3, 'monthly', $4, $5, $6)";

/// Adds a pass for `plate` in `lot`, valid `[from, until)`.
pub(crate) async fn add(
    db: &Db,
    lot: &LotId,
    plate: &Plate,
    (id, from, until): (Uuid, DateTime<Utc>, DateTime<Utc>),
    entry: &AuditEntry,
) -> Result<PassView, StoreError> {
    let pass = PassView {
        id,
        plate: plate.as_str().to_owned(),
        valid_from: db_time(from),
        valid_until: db_time(until),
    };
    let mut tx = db.begin_write().await?;
    query(INSERT_PASS)
        .bind(pass.id)
        .bind(lot.as_str())
        .bind(&pass.plate)
        .bind(pass.valid_from)
        .bind(pass.valid_until)
        .bind(db_time(entry.at))
        .execute(&mut tx)
        .await?;
    audit::insert(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(pass)
}

/// The lot's passes, the latest to start first.
pub(crate) async fn of_lot(db: &Db, lot: &LotId, limit: u32) -> Result<Vec<PassView>, StoreError> {
    query(
        "SELECT id, plate, valid_from, valid_until FROM passes WHERE lot_id = $1
         ORDER BY valid_from DESC, id LIMIT $2",
    )
    .bind(lot.as_str())
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}

/// Revokes pass `id` of `lot` at `entry.at`, recording `entry` in the same commit; whether there
/// was a pass still to revoke. A pass in force ends then (its history stays: stays it covered
/// were free); one not yet begun is removed.
pub(crate) async fn revoke(
    db: &Db,
    lot: &LotId,
    id: Uuid,
    entry: &AuditEntry,
) -> Result<bool, StoreError> {
    let now = db_time(entry.at);
    let mut tx = db.begin_write().await?;
    let ended = query(
        "UPDATE passes SET valid_until = $3
         WHERE id = $1 AND lot_id = $2 AND valid_from < $3 AND valid_until > $3",
    )
    .bind(id)
    .bind(lot.as_str())
    .bind(now)
    .execute(&mut tx)
    .await?;
    let removed = query("DELETE FROM passes WHERE id = $1 AND lot_id = $2 AND valid_from >= $3")
        .bind(id)
        .bind(lot.as_str())
        .bind(now)
        .execute(&mut tx)
        .await?;
    if ended + removed != 1 {
        return Ok(false);
    }
    audit::insert(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(true)
}

/// A blocked plate as its operator sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct BlockView {
    pub plate: String,
    pub reason: String,
    #[serde(with = "parkflow_protocol::time::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// The lot's blocked plates, the latest first.
pub(crate) async fn blocks_of_lot(
    db: &Db,
    lot: &LotId,
    limit: u32,
) -> Result<Vec<BlockView>, StoreError> {
    query(
        "SELECT plate, reason, created_at FROM blocked_plates WHERE lot_id = $1
         ORDER BY created_at DESC, plate LIMIT $2",
    )
    .bind(lot.as_str())
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
}

/// Lifts a block (idempotent).
/// A block lifted is audited with `entry`; lifting one that is not there changes and records nothing.
pub(crate) async fn unblock(
    db: &Db,
    lot: &LotId,
    plate: &Plate,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    let lifted = query("DELETE FROM blocked_plates WHERE lot_id = $1 AND plate = $2")
        .bind(lot.as_str())
        .bind(plate.as_str())
        .execute(&mut tx)
        .await?;
    if lifted == 1 {
        audit::insert(&mut tx, entry).await?;
    }
    tx.commit().await
}
