//! Checking what bay sensors, bay cameras and bridges send (SPEC §2): each message must be signed
//! by the device registered to the bay it speaks for (or, for a bridge, by the bridge, for bays
//! of its lot), carry its topic, lie within the clock window, and make sense. A bridge batch is
//! checked entry by entry: bad entries are counted and skipped, the good ones applied.

use chrono::{DateTime, Utc};
use parkflow_protocol::sign::{check_observed_at, open};
use parkflow_protocol::{
    BayId, BayPlateRead, BridgeBatch, BridgeEvent, DeviceId, Heartbeat, LotId, OccupancyEvent,
    Plate, StatusReport, Topic,
};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ingest::Rejection;
use crate::occupancy::BayEvent;
use crate::occupancy::sessions::BayPlate;
use crate::registry::{BayDeviceKind, BayIdx, DeviceKind, Lot, Registry};

/// A bridge batch whose entries are decoded one by one, so one bad entry spoils only itself.
#[derive(Deserialize)]
struct RawBatch {
    events: Vec<serde_json::Value>,
}

/// Finds a lot and one of its bays.
fn bay<'r>(
    registry: &'r Registry,
    lot: &LotId,
    bay: &BayId,
) -> Result<(&'r Lot, BayIdx), Rejection> {
    let lot = registry.lot_by_id(lot).ok_or(Rejection::UnknownLot)?;
    let bay = registry
        .bays()
        .find(lot.idx, bay.as_str())
        .ok_or(Rejection::UnknownBay)?;
    Ok((lot, bay))
}

/// Opens a message on a bay's topic: when signed, the signer must be the bay's `kind` device.
fn open_from_bay<T: DeserializeOwned>(
    registry: &Registry,
    lot: &Lot,
    bay: BayIdx,
    kind: BayDeviceKind,
    topic: &Topic,
    payload: &[u8],
) -> Result<T, Rejection> {
    let bays = registry.bays();
    let opened = open(payload, &topic.to_string(), lot.device_auth, |id| {
        bays.device_by_id(id.as_str())
            .map(|device| device.key.bytes().into_owned())
    })?;
    if let Some(signer) = &opened.signer {
        let registered = match kind {
            BayDeviceKind::Sensor => bays.sensor(bay),
            BayDeviceKind::Camera => bays.camera(bay),
        };
        if registered.is_none_or(|device| !device.is(signer.as_str())) {
            return Err(Rejection::NotRegistered);
        }
    }
    Ok(opened.body)
}

/// A sensor's report (an occupancy event or a heartbeat) as the occupancy actor takes it, once
/// its time, `seq` and battery make sense.
fn sensor_report(
    bay: BayIdx,
    occupied: bool,
    seq: u64,
    observed_at: DateTime<Utc>,
    battery_pct: Option<u8>,
    now: DateTime<Utc>,
) -> Result<BayEvent, Rejection> {
    check_observed_at(observed_at, now)?;
    // `seq` is stored as a signed 64-bit integer; a battery is at most full.
    if i64::try_from(seq).is_err() || battery_pct.is_some_and(|pct| pct > 100) {
        return Err(Rejection::Message("malformed"));
    }
    Ok(BayEvent {
        bay,
        occupied,
        seq,
        observed_at,
        received_at: now,
        battery_pct,
    })
}

/// `lots/{lot}/bays/{bay}/occupancy`.
pub(crate) fn occupancy(
    registry: &Registry,
    lot: &LotId,
    bay_id: &BayId,
    topic: &Topic,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<BayEvent, Rejection> {
    let (lot, bay) = bay(registry, lot, bay_id)?;
    let e: OccupancyEvent =
        open_from_bay(registry, lot, bay, BayDeviceKind::Sensor, topic, payload)?;
    sensor_report(bay, e.occupied, e.seq, e.observed_at, e.battery_pct, now)
}

/// `lots/{lot}/bays/{bay}/heartbeat`.
pub(crate) fn heartbeat(
    registry: &Registry,
    lot: &LotId,
    bay_id: &BayId,
    topic: &Topic,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<BayEvent, Rejection> {
    let (lot, bay) = bay(registry, lot, bay_id)?;
    let h: Heartbeat = open_from_bay(registry, lot, bay, BayDeviceKind::Sensor, topic, payload)?;
    sensor_report(bay, h.occupied, h.seq, h.observed_at, h.battery_pct, now)
}

/// `lots/{lot}/bays/{bay}/plate`.
pub(crate) fn plate(
    registry: &Registry,
    lot: &LotId,
    bay_id: &BayId,
    topic: &Topic,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<(BayIdx, BayPlate), Rejection> {
    let (lot, bay) = bay(registry, lot, bay_id)?;
    let read: BayPlateRead =
        open_from_bay(registry, lot, bay, BayDeviceKind::Camera, topic, payload)?;
    check_observed_at(read.observed_at, now)?;
    if !(0.0..=1.0).contains(&read.confidence) {
        return Err(Rejection::Message("malformed"));
    }
    let plate = Plate::parse(&read.plate).map_err(|_| Rejection::InvalidPlate)?;
    Ok((
        bay,
        BayPlate {
            plate,
            color: read.plate_color,
            confidence: read.confidence,
            event_id: read.event_id,
            observed_at: read.observed_at,
        },
    ))
}

/// `bridge/{device}/occupancy`: the batch's good events, and why each bad one was refused.
pub(crate) fn bridge(
    registry: &Registry,
    device: &DeviceId,
    topic: &Topic,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Result<(Vec<BayEvent>, Vec<Rejection>), Rejection> {
    let bridge = registry
        .device(device)
        .filter(|d| d.kind == DeviceKind::Bridge)
        .ok_or(Rejection::NotRegistered)?;
    let lot = bridge
        .lot
        .as_ref()
        .and_then(|lot| registry.lot_by_id(lot))
        .ok_or(Rejection::NotRegistered)?;
    let opened = open::<RawBatch, _>(payload, &topic.to_string(), lot.device_auth, |id| {
        registry
            .device(id)
            .map(|d| d.secret.expose_secret().to_owned())
    })?;
    if opened
        .signer
        .as_ref()
        .is_some_and(|signer| signer != device)
    {
        return Err(Rejection::NotRegistered);
    }
    if opened.body.events.len() > BridgeBatch::MAX_EVENTS {
        return Err(Rejection::Oversized);
    }
    let mut events = Vec::with_capacity(opened.body.events.len());
    let mut rejected = Vec::new();
    for raw in opened.body.events {
        let entry = serde_json::from_value::<BridgeEvent>(raw)
            .map_err(|_| Rejection::Message("malformed"))
            .and_then(|event| {
                if event.lot != lot.id {
                    // A bridge speaks only for the lot it is registered to.
                    return Err(Rejection::NotRegistered);
                }
                let bay = registry
                    .bays()
                    .find(lot.idx, event.bay.as_str())
                    .ok_or(Rejection::UnknownBay)?;
                sensor_report(bay, event.occupied, event.seq, event.observed_at, None, now)
            });
        match entry {
            Ok(event) => events.push(event),
            Err(rejection) => rejected.push(rejection),
        }
    }
    Ok((events, rejected))
}

/// `devices/{device}/status`: a device's own report of its connection, signed by it (on a
/// `signed` lot) like anything else it sends. A bay sensor's bay comes back with it (its
/// `offline` turns the bay unknown); other devices' reports are checked all the same.
pub(crate) fn status(
    registry: &Registry,
    device: &DeviceId,
    topic: &Topic,
    payload: &[u8],
) -> Result<(Option<BayIdx>, StatusReport), Rejection> {
    let bays = registry.bays();
    // The device's lot, its bay when it is a sensor, and its key: looked up once.
    let (lot, sensor, key) = match bays.device_by_id(device.as_str()) {
        Some(bay_device) => (
            registry.lot(bays.lot_of(bay_device.bay)),
            (bay_device.kind == BayDeviceKind::Sensor).then_some(bay_device.bay),
            std::borrow::Cow::Owned(bay_device.key.bytes().into_owned()),
        ),
        None => {
            // No device of this platform: another platform's on a shared broker, or a stray.
            let registered = registry.device(device).ok_or(Rejection::UnknownDevice)?;
            let lot = registered
                .lot
                .as_ref()
                .and_then(|lot| registry.lot_by_id(lot))
                .ok_or(Rejection::NotRegistered)?;
            let key = registered.secret.expose_secret().as_bytes();
            (lot, None, std::borrow::Cow::Borrowed(key))
        }
    };
    // Only the device itself speaks for its status.
    let opened = open::<StatusReport, _>(payload, &topic.to_string(), lot.device_auth, |id| {
        (id == device).then_some(key)
    })?;
    let report = opened.body;
    if report.connection.is_empty() || report.connection.len() > StatusReport::MAX_CONNECTION_LEN {
        return Err(Rejection::Message("malformed"));
    }
    Ok((sensor, report))
}
