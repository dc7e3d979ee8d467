//! Loading the registry (lots, their tariffs, gates, devices) from the database.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parkflow_billing::{TariffDefinition, TariffSchedule};
use parkflow_protocol::{BayId, DeviceAuth, DeviceId, GateId, LotId};

use super::{Db, StoreError, on_db};
use crate::registry::{
    Device, DeviceKind, Gate, GateDirection, Location, Lot, LotIdx, LotKind, Registry,
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

fn corrupt(what: &str, id: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}"))
}

/// Reads the whole registry. Lots are indexed by creation order, so indices stay stable as lots are added.
pub async fn load(db: &Db) -> Result<Registry, StoreError> {
    let (lot_rows, tariff_rows, gate_rows, device_rows) = on_db!(db, pool => {
        let lots: Vec<LotRow> = sqlx::query_as(
            "SELECT id, operator_id, name, kind, lat, lon, capacity, time_zone, device_auth FROM lots ORDER BY created_at, id",
        )
        .fetch_all(pool)
        .await?;
        let tariffs: Vec<TariffRow> =
            sqlx::query_as("SELECT lot_id, definition FROM tariffs ORDER BY lot_id, version").fetch_all(pool).await?;
        let gates: Vec<GateRow> = sqlx::query_as("SELECT lot_id, id, direction FROM gates").fetch_all(pool).await?;
        let devices: Vec<DeviceRow> = sqlx::query_as(
            "SELECT id, kind, lot_id, gate_id, bay_id, mqtt_username, mqtt_password_hash, secret, revoked_at FROM devices",
        )
        .fetch_all(pool)
        .await?;
        (lots, tariffs, gates, devices)
    });

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
            secret: row.secret,
            revoked: row.revoked_at.is_some(),
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
    Ok(Registry::new(lots, gates, devices))
}
