//! Provisioning: writing a whole plan of operators, lots, gates, bays, devices, drivers, passes and
//! blocks in one transaction. Used by the demo city, by tests and by the operator API; idempotent
//! (re-running a plan adds what is missing; a lot that exists keeps its fields, which only
//! `update_lot` changes).

use chrono::{DateTime, Utc};
use parkflow_billing::TariffDefinition;
use parkflow_protocol::standing::OfflinePolicy;
use parkflow_protocol::{BayId, DeviceAuth, DeviceId, GateId, LotId, Plate, PlateColor};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use parkflow_billing::drivers::{self, DriverStatus, NewDriver};
use parkflow_db::{Executor, QueryBuilder, query};

use super::{Db, StoreError, db_time};
use crate::registry::{DeviceKind, GateDirection, LotKind, mqtt_password, password_hash};

/// Everything to provision.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub operators: Vec<OperatorPlan>,
    pub lots: Vec<LotPlan>,
    pub devices: Vec<DevicePlan>,
    pub drivers: Vec<DriverPlan>,
    pub passes: Vec<PassPlan>,
    pub blocks: Vec<BlockPlan>,
    /// Which of `devices` are off-the-shelf ANPR cameras (gate cameras that speak HTTP).
    pub anpr: Vec<AnprPlan>,
}

/// A device of the plan that is an off-the-shelf ANPR camera: its vendor, and where its barrier
/// call goes (none: a ParkFlow MQTT barrier controller on the gate's `command` topic).
#[derive(Debug, Clone)]
pub struct AnprPlan {
    pub device: DeviceId,
    pub vendor: crate::anpr::Vendor,
    pub control_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OperatorPlan {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct LotPlan {
    pub id: LotId,
    pub operator_id: String,
    pub name: String,
    pub kind: LotKind,
    pub lat: f64,
    pub lon: f64,
    pub capacity: u32,
    pub time_zone: String,
    pub device_auth: DeviceAuth,
    pub gates: Vec<(GateId, GateDirection)>,
    pub bays: Vec<BayId>,
    /// Stays longer than this are flagged as overstays.
    pub max_stay_minutes: Option<u32>,
    /// How its lanes let out, while the platform is away, a car their list does not name.
    pub offline_policy: OfflinePolicy,
    /// Tariff versions; each is stored once per `effective_from`.
    pub tariffs: Vec<TariffDefinition>,
}

#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub id: DeviceId,
    pub kind: DeviceKind,
    pub lot: Option<LotId>,
    pub gate: Option<GateId>,
    pub bay: Option<BayId>,
    pub mqtt_username: String,
    /// The HMAC key of its signed messages; its MQTT password is derived from it
    /// ([`DevicePlan::mqtt_password`]) and stored hashed.
    pub secret: SecretString,
}

impl DevicePlan {
    /// The MQTT password the device logs in with.
    pub fn mqtt_password(&self) -> SecretString {
        mqtt_password(self.secret.expose_secret()).into()
    }
}

#[derive(Debug, Clone)]
pub struct DriverPlan {
    pub id: Uuid,
    pub name: String,
    pub suspended: bool,
    /// The payment account (provider token) auto-debits go to.
    pub payment_account: Option<SecretString>,
    pub plates: Vec<(Plate, Option<PlateColor>)>,
}

#[derive(Debug, Clone)]
pub struct PassPlan {
    pub lot: LotId,
    pub plate: Plate,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct BlockPlan {
    pub lot: LotId,
    pub plate: Plate,
    pub reason: String,
}

/// Rows per multi-row statement (bays and devices come by the hundred thousand in a city).
const ROWS_PER_STATEMENT: usize = 500;

/// Inserts a lot that does not exist yet (nothing when its id is taken); the rows inserted.
async fn insert_lot<'c>(
    on: impl Executor<'c>,
    lot: &LotPlan,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    query(
        "INSERT INTO lots (id, operator_id, name, kind, lat, lon, capacity, time_zone, device_auth, max_stay_minutes, offline_policy, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
    )
    .bind(lot.id.as_str())
    .bind(&lot.operator_id)
    .bind(&lot.name)
    .bind(lot.kind.as_str())
    .bind(lot.lat)
    .bind(lot.lon)
    .bind(i64::from(lot.capacity))
    .bind(&lot.time_zone)
    .bind(lot.device_auth.as_str())
    .bind(lot.max_stay_minutes.map(i64::from))
    .bind(lot.offline_policy.as_str())
    .bind(now)
    .execute(on)
    .await
}

/// Writes `plan` in one transaction.
pub async fn provision(db: &Db, plan: &Plan, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = db_time(now);
    let mut tx = db.begin_write().await?;
    for operator in &plan.operators {
        query(
            "INSERT INTO operators (id, name, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(&operator.id)
        .bind(&operator.name)
        .bind(now)
        .execute(&mut tx)
        .await?;
    }
    for lot in &plan.lots {
        // A lot that exists keeps its row: a plan adds gates, bays and tariffs to it, and
        // never undoes an operator's change (`update_lot` is how a lot changes).
        insert_lot(&mut tx, lot, now).await?;
        for (gate, direction) in &lot.gates {
            query(
                "INSERT INTO gates (lot_id, id, direction) VALUES ($1, $2, $3)
                 ON CONFLICT (lot_id, id) DO UPDATE SET direction = excluded.direction",
            )
            .bind(lot.id.as_str())
            .bind(gate.as_str())
            .bind(direction.as_str())
            .execute(&mut tx)
            .await?;
        }
        for chunk in lot.bays.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::new("INSERT INTO bays (lot_id, id) ");
            insert.push_values(chunk, |mut row, bay| {
                row.push_bind(lot.id.as_str()).push_bind(bay.as_str());
            });
            insert.push(" ON CONFLICT (lot_id, id) DO NOTHING");
            insert.build().persistent(false).execute(&mut tx).await?;
        }
        for tariff in &lot.tariffs {
            let definition =
                serde_json::to_string(tariff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            query(INSERT_TARIFF)
                .bind(lot.id.as_str())
                .bind(db_time(tariff.effective_from))
                .bind(definition)
                .bind(now)
                .execute(&mut tx)
                .await?;
        }
    }
    for chunk in plan.devices.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO devices (id, kind, lot_id, gate_id, bay_id, mqtt_username, mqtt_password_hash, secret, created_at) ",
        );
        insert.push_values(chunk, |mut row, device| {
            row.push_bind(device.id.as_str())
                .push_bind(device.kind.as_str())
                .push_bind(device.lot.as_ref().map(LotId::as_str))
                .push_bind(device.gate.as_ref().map(GateId::as_str))
                .push_bind(device.bay.as_ref().map(BayId::as_str))
                .push_bind(&device.mqtt_username)
                .push_bind(password_hash(device.mqtt_password().expose_secret()))
                .push_bind(db.seal(device.id.as_str(), device.secret.expose_secret()))
                .push_bind(now);
        });
        insert.push(
            " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lot_id = excluded.lot_id, gate_id = excluded.gate_id,
                 bay_id = excluded.bay_id, mqtt_username = excluded.mqtt_username,
                 mqtt_password_hash = excluded.mqtt_password_hash, secret = excluded.secret, revoked_at = NULL",
        );
        insert.build().persistent(false).execute(&mut tx).await?;
    }
    for anpr in &plan.anpr {
        let device = plan
            .devices
            .iter()
            .find(|d| d.id == anpr.device)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("ANPR camera {} is no device", anpr.device))
            })?;
        let ha1 =
            crate::anpr::digest::ha1(device.id.as_str(), device.mqtt_password().expose_secret());
        query(
            "INSERT INTO anpr_cameras (device_id, vendor, control, control_url, digest_ha1)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE SET vendor = excluded.vendor,
                 control = excluded.control, control_url = excluded.control_url,
                 digest_ha1 = excluded.digest_ha1",
        )
        .bind(device.id.as_str())
        .bind(anpr.vendor.as_str())
        .bind(if anpr.control_url.is_some() {
            "http"
        } else {
            "mqtt"
        })
        .bind(anpr.control_url.as_deref())
        .bind(db.seal(device.id.as_str(), &ha1))
        .execute(&mut tx)
        .await?;
    }
    for driver in &plan.drivers {
        let stored = NewDriver {
            id: driver.id,
            name: &driver.name,
            status: if driver.suspended {
                DriverStatus::Suspended
            } else {
                DriverStatus::Active
            },
            auto_debit: true,
            payment_account: driver
                .payment_account
                .as_ref()
                .map(ExposeSecret::expose_secret),
        };
        drivers::upsert(&mut tx, &stored, now).await?;
        for (plate, color) in &driver.plates {
            drivers::assign_plate(&mut tx, driver.id, plate, *color, now).await?;
        }
    }
    for pass in &plan.passes {
        query(super::passes::INSERT_PASS)
            .bind(Uuid::now_v7())
            .bind(pass.lot.as_str())
            .bind(pass.plate.as_str())
            .bind(db_time(pass.valid_from))
            .bind(db_time(pass.valid_until))
            .bind(now)
            .execute(&mut tx)
            .await?;
    }
    for block in &plan.blocks {
        query(
            "INSERT INTO blocked_plates (lot_id, plate, reason, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (lot_id, plate) DO UPDATE SET reason = excluded.reason",
        )
        .bind(block.lot.as_str())
        .bind(block.plate.as_str())
        .bind(&block.reason)
        .bind(now)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await
}

/// The signing secrets of the devices stored already, by device id. Provisioning the same city
/// again (a restarted demo) gives each device these instead of fresh ones, so that devices in
/// the field, which hold them, go on working.
pub async fn stored_secrets(
    db: &Db,
) -> Result<std::collections::HashMap<String, SecretString>, StoreError> {
    let rows: Vec<(String, String)> =
        query("SELECT id, secret FROM devices WHERE revoked_at IS NULL")
            .fetch_all(db)
            .await?;
    rows.into_iter()
        .map(|(id, secret)| {
            let secret = SecretString::from(db.unseal(&id, &secret)?);
            Ok((id, secret))
        })
        .collect()
}

/// Creates a lot that must not exist yet (an operator's new lot): `false` if the id is taken, in
/// which case nothing changes — another operator's lot is never overwritten.
pub async fn create_lot(db: &Db, lot: &LotPlan, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(insert_lot(db, lot, db_time(now)).await? == 1)
}

/// What an operator changes of a lot; `None` keeps a field as it is (`Some(None)` clears the
/// maximum stay).
#[derive(Debug, Clone, Default)]
pub struct LotChange {
    pub name: Option<String>,
    pub location: Option<(f64, f64)>,
    pub capacity: Option<u32>,
    pub device_auth: Option<DeviceAuth>,
    pub max_stay_minutes: Option<Option<u32>>,
    pub offline_policy: Option<OfflinePolicy>,
    pub review_pictures: Option<bool>,
}

/// Applies `change` to `lot`, field by field, so that two changes to different fields both stand.
pub async fn update_lot(db: &Db, lot: &LotId, change: &LotChange) -> Result<(), StoreError> {
    query(
        "UPDATE lots SET name = COALESCE($2, name), lat = COALESCE($3, lat), lon = COALESCE($4, lon),
             capacity = COALESCE($5, capacity), device_auth = COALESCE($6, device_auth),
             max_stay_minutes = CASE WHEN $7 THEN $8 ELSE max_stay_minutes END,
             offline_policy = COALESCE($9, offline_policy),
             review_pictures = COALESCE($10, review_pictures)
         WHERE id = $1",
    )
    .bind(lot.as_str())
    .bind(change.name.as_deref())
    .bind(change.location.map(|(lat, _)| lat))
    .bind(change.location.map(|(_, lon)| lon))
    .bind(change.capacity.map(i64::from))
    .bind(change.device_auth.map(DeviceAuth::as_str))
    .bind(change.max_stay_minutes.is_some())
    .bind(change.max_stay_minutes.flatten().map(i64::from))
    .bind(change.offline_policy.map(OfflinePolicy::as_str))
    .bind(change.review_pictures)
    .execute(db)
    .await
    .map(drop)
}

/// What removing a gate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRemoval {
    Removed,
    NotFound,
    /// A camera not revoked is registered to it.
    HasDevice,
}

/// Removes a lane from a lot unless a live camera is registered to it.
pub async fn remove_gate(db: &Db, lot: &LotId, gate: &GateId) -> Result<GateRemoval, StoreError> {
    let mut tx = db.begin_write().await?;
    // The delete comes first: it waits for a camera being registered to this gate (which
    // writes the gate row first), so the count below sees that camera.
    let removed = query("DELETE FROM gates WHERE lot_id = $1 AND id = $2")
        .bind(lot.as_str())
        .bind(gate.as_str())
        .execute(&mut tx)
        .await?;
    if removed == 0 {
        return Ok(GateRemoval::NotFound);
    }
    let (devices,): (i64,) = query(
        "SELECT COUNT(*) FROM devices WHERE lot_id = $1 AND gate_id = $2 AND revoked_at IS NULL",
    )
    .bind(lot.as_str())
    .bind(gate.as_str())
    .fetch_one(&mut tx)
    .await?;
    if devices > 0 {
        return Ok(GateRemoval::HasDevice);
    }
    tx.commit().await?;
    Ok(GateRemoval::Removed)
}

/// A lot's next tariff version, numbered after its last; nothing when one with the same
/// `effective_from` exists.
const INSERT_TARIFF: &str =
    "INSERT INTO tariffs (lot_id, version, effective_from, definition, created_at)
     VALUES ($1, (SELECT COALESCE(MAX(version), 0) + 1 FROM tariffs WHERE lot_id = $1), $2, $3, $4)
     ON CONFLICT (lot_id, effective_from) DO NOTHING";

/// Adds a tariff version to `lot`; false when a version with its `effective_from` exists.
pub async fn add_tariff(
    db: &Db,
    lot: &LotId,
    tariff: &TariffDefinition,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let definition =
        serde_json::to_string(tariff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = db.begin_write().await?;
    // Write first: on PostgreSQL the lot row's lock orders concurrent versions, so each is
    // numbered after the one committed before it (two at once were numbered alike).
    query("UPDATE lots SET name = name WHERE id = $1")
        .bind(lot.as_str())
        .execute(&mut tx)
        .await?;
    let added = query(INSERT_TARIFF)
        .bind(lot.as_str())
        .bind(db_time(tariff.effective_from))
        .bind(definition)
        .bind(db_time(now))
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(added == 1)
}

/// A plan of one operator (`op-1`) and off-street lots with these ids, nothing else: the
/// smallest city a store test writes into.
#[cfg(test)]
pub(crate) fn lots_only(ids: &[&str]) -> Plan {
    Plan {
        operators: vec![OperatorPlan {
            id: "op-1".into(),
            name: "op".into(),
        }],
        lots: ids
            .iter()
            .map(|id| LotPlan {
                id: LotId::parse(id).unwrap_or_else(|e| panic!("lot id {id}: {e}")),
                operator_id: "op-1".into(),
                name: (*id).into(),
                kind: LotKind::OffStreet,
                lat: 30.27,
                lon: 120.15,
                capacity: 10_000,
                time_zone: "Asia/Shanghai".into(),
                device_auth: DeviceAuth::Signed,
                gates: Vec::new(),
                bays: Vec::new(),
                max_stay_minutes: None,
                offline_policy: Default::default(),
                tariffs: Vec::new(),
            })
            .collect(),
        ..Plan::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Device;

    /// Plans and registered devices printed whole (a `{:?}` in a log line, a panic) show none of
    /// the secrets they carry.
    #[test]
    fn no_secret_in_printed_plans_or_devices() {
        let id = DeviceId::parse("cam-1").expect("an id");
        let device = DevicePlan {
            id: id.clone(),
            kind: DeviceKind::GateCamera,
            lot: None,
            gate: None,
            bay: None,
            mqtt_username: "cam-1".into(),
            secret: "hmac-s3cret".into(),
        };
        let driver = DriverPlan {
            id: Uuid::nil(),
            name: "Lin".into(),
            suspended: false,
            payment_account: Some("acct-s3cret".into()),
            plates: Vec::new(),
        };
        let registered = Device {
            id,
            kind: DeviceKind::GateCamera,
            lot: None,
            gate: None,
            bay: None,
            mqtt_username: "cam-1".into(),
            mqtt_password_hash: password_hash("mqtt-pw-s3cret"),
            secret: "hmac-s3cret".into(),
            revoked: false,
            anpr: None,
        };
        let printed = format!("{device:?} {driver:?} {registered:?}");
        for secret in ["mqtt-pw-s3cret", "hmac-s3cret", "acct-s3cret"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
    }
}
