//! Loading the registry (lots, their tariffs, gates, bays, devices) from the database.
//!
//! Bays and bay devices (hundreds of thousands) are streamed row by row into the compact
//! [`BayTable`], never held as rows all at once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parkflow_billing::{TariffDefinition, TariffSchedule};
use parkflow_protocol::{BayId, DeviceAuth, DeviceId, GateId, LotId};

use parkflow_db::query;
use secrecy::SecretString;

use super::{Db, StoreError};
use crate::anpr::barrier::HttpControl;
use crate::anpr::{AnprCamera, Vendor};
use crate::registry::access::Client;
use crate::registry::{
    BayDeviceKind, BayTable, BayTableBuilder, Device, DeviceKind, Gate, GateDirection, Location,
    Lot, LotIdx, LotKind, Registry, password_hash,
};

#[derive(sqlx::FromRow)]
struct LotRow {
    id: String,
    operator_id: String,
    name: String,
    kind: String,
    lat: f64,
    lon: f64,
    capacity: i32,
    time_zone: String,
    device_auth: String,
    max_stay_minutes: Option<i32>,
    offline_policy: String,
    review_pictures: bool,
}

#[derive(sqlx::FromRow)]
struct TariffRow {
    lot_id: String,
    definition: String,
}

#[derive(sqlx::FromRow)]
struct GateRow {
    lot_id: String,
    id: String,
    direction: String,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    kind: String,
    lot_id: Option<String>,
    gate_id: Option<String>,
    bay_id: Option<String>,
    mqtt_username: String,
    mqtt_password_hash: String,
    secret: String,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct BayDeviceRow {
    id: String,
    kind: String,
    lot_id: Option<String>,
    bay_id: Option<String>,
    secret: String,
}

fn corrupt(what: &str, id: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}"))
}

/// Reads the whole registry. Lots are indexed by creation order, so indices stay stable as lots are added.
pub async fn load(db: &Db) -> Result<Registry, StoreError> {
    let lot_rows: Vec<LotRow> = query(
        "SELECT id, operator_id, name, kind, lat, lon, capacity, time_zone, device_auth, max_stay_minutes, offline_policy, review_pictures FROM lots ORDER BY created_at, id",
    )
    .fetch_all(db)
    .await?;
    let tariff_rows: Vec<TariffRow> =
        query("SELECT lot_id, definition FROM tariffs ORDER BY lot_id, version")
            .fetch_all(db)
            .await?;
    let gate_rows: Vec<GateRow> = query("SELECT lot_id, id, direction FROM gates")
        .fetch_all(db)
        .await?;
    let device_rows: Vec<DeviceRow> = query(
        "SELECT id, kind, lot_id, gate_id, bay_id, mqtt_username, mqtt_password_hash, secret, revoked_at FROM devices
         WHERE kind IN ('gate_camera', 'bridge')",
    )
    .fetch_all(db)
    .await?;
    let mut anpr = load_anpr(db).await?;

    let mut schedules: HashMap<String, TariffSchedule> = HashMap::new();
    for row in tariff_rows {
        let definition: TariffDefinition = serde_json::from_str(&row.definition)
            .map_err(|_| corrupt("tariff of lot", &row.lot_id))?;
        let tariff = definition
            .validate()
            .map_err(|_| corrupt("tariff of lot", &row.lot_id))?;
        schedules
            .entry(row.lot_id.clone())
            .or_default()
            .add(tariff)
            .map_err(|_| corrupt("tariff of lot", &row.lot_id))?;
    }

    let mut lots = Vec::with_capacity(lot_rows.len());
    let mut lot_index: HashMap<String, LotIdx> = HashMap::with_capacity(lot_rows.len());
    for (idx, row) in lot_rows.into_iter().enumerate() {
        let idx = LotIdx::try_from(idx).map_err(|_| corrupt("too many lots at", &row.id))?;
        let id = LotId::parse(&row.id).map_err(|_| corrupt("lot id", &row.id))?;
        lot_index.insert(row.id.clone(), idx);
        lots.push(Lot {
            idx,
            kind: LotKind::parse(&row.kind).ok_or_else(|| corrupt("kind of lot", &row.id))?,
            device_auth: DeviceAuth::parse(&row.device_auth)
                .ok_or_else(|| corrupt("device_auth of lot", &row.id))?,
            capacity: u32::try_from(row.capacity)
                .map_err(|_| corrupt("capacity of lot", &row.id))?,
            tariffs: schedules.remove(&row.id).unwrap_or_default(),
            max_stay: row
                .max_stay_minutes
                .map(|minutes| chrono::Duration::minutes(i64::from(minutes))),
            offline_policy: parkflow_protocol::standing::OfflinePolicy::parse(&row.offline_policy)
                .ok_or_else(|| corrupt("offline_policy of lot", &row.id))?,
            review_pictures: row.review_pictures,
            location: Location {
                lat: row.lat,
                lon: row.lon,
            },
            operator_id: row.operator_id,
            name: row.name,
            time_zone: row.time_zone,
            id,
        });
    }

    let mut gates = Vec::with_capacity(gate_rows.len());
    for row in gate_rows {
        let lot = *lot_index
            .get(&row.lot_id)
            .ok_or_else(|| corrupt("lot of gate", &row.id))?;
        gates.push(Gate {
            lot,
            id: GateId::parse(&row.id).map_err(|_| corrupt("gate id", &row.id))?,
            direction: GateDirection::parse(&row.direction)
                .ok_or_else(|| corrupt("direction of gate", &row.id))?,
            camera: None,
        });
    }

    let gate_position: HashMap<(LotIdx, GateId), usize> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| ((g.lot, g.id.clone()), i))
        .collect();
    let mut devices = Vec::with_capacity(device_rows.len());
    for row in device_rows {
        let device = Device {
            id: DeviceId::parse(&row.id).map_err(|_| corrupt("device id", &row.id))?,
            kind: DeviceKind::parse(&row.kind).ok_or_else(|| corrupt("kind of device", &row.id))?,
            lot: row
                .lot_id
                .as_deref()
                .map(LotId::parse)
                .transpose()
                .map_err(|_| corrupt("lot of device", &row.id))?,
            gate: row
                .gate_id
                .as_deref()
                .map(GateId::parse)
                .transpose()
                .map_err(|_| corrupt("gate of device", &row.id))?,
            bay: row
                .bay_id
                .as_deref()
                .map(BayId::parse)
                .transpose()
                .map_err(|_| corrupt("bay of device", &row.id))?,
            mqtt_username: row.mqtt_username,
            mqtt_password_hash: row.mqtt_password_hash,
            secret: db.unseal(&row.id, &row.secret)?.into(),
            revoked: row.revoked_at.is_some(),
            anpr: anpr.remove(&row.id).map(std::sync::Arc::new),
        };
        if let (DeviceKind::GateCamera, false, Some(lot), Some(gate_id)) =
            (device.kind, device.revoked, &device.lot, &device.gate)
        {
            let position = lot_index
                .get(lot.as_str())
                .and_then(|idx| gate_position.get(&(*idx, gate_id.clone())));
            if let Some(position) = position {
                gates[*position].camera = Some(device.id.clone());
            }
        }
        devices.push(device);
    }
    let bays = load_bays(db, &lots, &lot_index).await?;
    Ok(Registry::new(lots, gates, devices, bays))
}

#[derive(sqlx::FromRow)]
struct AnprRow {
    device_id: String,
    vendor: String,
    control: String,
    control_url: Option<String>,
    control_username: Option<String>,
    control_password: Option<String>,
    digest_ha1: Option<String>,
    allow_from: String,
}

/// The ANPR cameras' own settings, by device id.
async fn load_anpr(db: &Db) -> Result<HashMap<String, AnprCamera>, StoreError> {
    let rows: Vec<AnprRow> = query(
        "SELECT device_id, vendor, control, control_url, control_username, control_password,
             digest_ha1, allow_from FROM anpr_cameras",
    )
    .fetch_all(db)
    .await?;
    let mut cameras = HashMap::with_capacity(rows.len());
    for row in rows {
        let vendor =
            Vendor::parse(&row.vendor).ok_or_else(|| corrupt("vendor of", &row.device_id))?;
        let control = match (row.control.as_str(), row.control_url) {
            ("http", Some(url)) => Some(HttpControl {
                vendor,
                url,
                username: row.control_username,
                password: row
                    .control_password
                    .map(|p| db.unseal(&row.device_id, &p).map(SecretString::from))
                    .transpose()?,
            }),
            ("mqtt", _) => None,
            _ => return Err(corrupt("control of", &row.device_id)),
        };
        let allow_from = row
            .allow_from
            .split(',')
            .map(str::trim)
            .filter(|net| !net.is_empty())
            .map(|net| net.parse::<ipnet::IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| corrupt("allow_from of", &row.device_id))?;
        let digest_ha1 = row
            .digest_ha1
            .map(|h| db.unseal(&row.device_id, &h).map(SecretString::from))
            .transpose()?;
        cameras.insert(
            row.device_id,
            AnprCamera {
                vendor,
                control,
                allow_from,
                digest_ha1,
            },
        );
    }
    Ok(cameras)
}

/// Streams every bay (lot by lot, in lot order) and every bay device into a [`BayTable`].
async fn load_bays(
    db: &Db,
    lots: &[Lot],
    lot_index: &HashMap<String, LotIdx>,
) -> Result<BayTable, StoreError> {
    let mut builder = BayTableBuilder::default();
    let mut next_lot = 0usize;
    let mut current: Vec<String> = Vec::new();
    let mut skipped = 0u64;
    query(
        "SELECT b.lot_id, b.id FROM bays b JOIN lots l ON l.id = b.lot_id ORDER BY l.created_at, l.id",
    )
    .for_each(db, |(lot_id, bay_id): (String, String)| {
        if !lot_index.contains_key(&lot_id) {
            // A lot created after the lots were read: its bays come with the next reload.
            skipped += 1;
            return Ok(());
        }
        // Close the lots before this row's lot (some have no bays).
        while next_lot < lots.len() && lots[next_lot].id.as_str() != lot_id {
            builder.lot(std::mem::take(&mut current));
            next_lot += 1;
        }
        if next_lot == lots.len() {
            // Rows come in lot order, so this cannot happen; if it does, skip rather than misplace.
            skipped += 1;
            return Ok(());
        }
        current.push(bay_id);
        Ok(())
    })
    .await?;
    while next_lot < lots.len() {
        builder.lot(std::mem::take(&mut current));
        next_lot += 1;
    }
    if skipped > 0 {
        tracing::info!(
            bays = skipped,
            "bays of lots newer than this load wait for the next reload"
        );
    }
    builder.finish_bays();
    let mut unplaced = 0u64;
    query(
        "SELECT id, kind, lot_id, bay_id, secret FROM devices
         WHERE kind IN ('bay_sensor', 'bay_camera') AND revoked_at IS NULL",
    )
    .for_each(db, |row: BayDeviceRow| {
        let kind = match DeviceKind::parse(&row.kind) {
            Some(DeviceKind::BayCamera) => BayDeviceKind::Camera,
            _ => BayDeviceKind::Sensor,
        };
        let bay = row
            .lot_id
            .and_then(|lot| lot_index.get(&lot).copied())
            .zip(row.bay_id)
            .and_then(|(lot, bay)| builder.find(lot, &bay));
        match bay {
            Some(bay) => builder.device(&row.id, &db.unseal(&row.id, &row.secret)?, bay, kind),
            None => unplaced += 1,
        }
        Ok(())
    })
    .await?;
    if unplaced > 0 {
        tracing::warn!(
            devices = unplaced,
            "bay devices registered to no known bay were not loaded"
        );
    }
    Ok(builder.build())
}

/// Checks a bay device's MQTT login against the database (bay devices' password hashes are not
/// kept in memory): not revoked, the right password, client id = device id.
pub async fn authenticate(
    db: &Db,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<bool, StoreError> {
    let row: Option<(String, String)> = query(
        "SELECT id, mqtt_password_hash FROM devices
         WHERE mqtt_username = $1 AND revoked_at IS NULL AND kind IN ('bay_sensor', 'bay_camera')",
    )
    .bind(username)
    .fetch_optional(db)
    .await?;
    Ok(row.is_some_and(|(id, hash)| id == client_id && hash == password_hash(password)))
}

/// An active device as a broker that keeps its own permission lists needs it
/// ([`crate::mqtt::dynsec`]).
#[derive(Debug, Clone)]
pub struct BrokerDevice {
    pub id: DeviceId,
    /// What it is and where, for its grants.
    pub client: Client,
    pub mqtt_username: String,
    pub mqtt_password_hash: String,
    pub secret: SecretString,
}

/// Every device not revoked, as brokers see it. Devices that name no lot, gate or bay of their
/// kind get no permissions (and are counted in the log).
pub async fn broker_devices(db: &Db) -> Result<Vec<BrokerDevice>, StoreError> {
    let rows: Vec<DeviceRow> = query(format!(
        "SELECT {BROKER_COLUMNS} FROM devices WHERE revoked_at IS NULL ORDER BY id"
    ))
    .fetch_all(db)
    .await?;
    let mut devices = Vec::with_capacity(rows.len());
    let mut unplaced = 0u64;
    for row in rows {
        match broker_device_of(db, row)? {
            Some(device) => devices.push(device),
            None => unplaced += 1,
        }
    }
    if unplaced > 0 {
        tracing::warn!(
            devices = unplaced,
            "devices placed at no lot, gate or bay of their kind get no broker permissions"
        );
    }
    Ok(devices)
}

/// One device as brokers see it; `None` if it is revoked, unknown or placed nowhere.
pub async fn broker_device(db: &Db, id: &DeviceId) -> Result<Option<BrokerDevice>, StoreError> {
    let row: Option<DeviceRow> = query(format!(
        "SELECT {BROKER_COLUMNS} FROM devices WHERE id = $1 AND revoked_at IS NULL"
    ))
    .bind(id.as_str())
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(row) => broker_device_of(db, row)?,
        None => None,
    })
}

const BROKER_COLUMNS: &str =
    "id, kind, lot_id, gate_id, bay_id, mqtt_username, mqtt_password_hash, secret, revoked_at";

fn broker_device_of(db: &Db, row: DeviceRow) -> Result<Option<BrokerDevice>, StoreError> {
    let id = DeviceId::parse(&row.id).map_err(|_| corrupt("device id", &row.id))?;
    let lot = row.lot_id.as_deref().and_then(|l| LotId::parse(l).ok());
    let gate = row.gate_id.as_deref().and_then(|g| GateId::parse(g).ok());
    let bay = row.bay_id.as_deref().and_then(|b| BayId::parse(b).ok());
    let client = match (DeviceKind::parse(&row.kind), lot, gate, bay) {
        (Some(DeviceKind::GateCamera), Some(lot), Some(gate), _) => Client::GateCamera {
            id: id.clone(),
            lot,
            gate,
        },
        (Some(DeviceKind::BaySensor), Some(lot), _, Some(bay)) => Client::BaySensor {
            id: id.clone(),
            lot,
            bay,
        },
        (Some(DeviceKind::BayCamera), Some(lot), _, Some(bay)) => Client::BayCamera {
            id: id.clone(),
            lot,
            bay,
        },
        (Some(DeviceKind::Bridge), ..) => Client::Bridge { id: id.clone() },
        _ => return Ok(None),
    };
    Ok(Some(BrokerDevice {
        id,
        client,
        mqtt_username: row.mqtt_username,
        secret: db.unseal(&row.id, &row.secret)?.into(),
        mqtt_password_hash: row.mqtt_password_hash,
    }))
}
