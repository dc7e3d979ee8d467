//! Ingest: checks each arriving message (size, signature, topic binding, registration, clock
//! window, payload) and hands what passes to its owner. What fails is counted by reason and
//! logged at most once per reason every few seconds; it never stops ingestion.

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parkflow_protocol::sign::{check_observed_at, open};
use parkflow_protocol::{
    DeviceStatus, GateId, GatePlateRead, GateState, MessageError, Plate, Topic,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::bay_ingest;
use super::link::Inbound;
use crate::cluster::Ownership;
use crate::gate::OfflineReport as GateOfflineReport;
use crate::gate::{GateHandle, GateMessage, GateRead, OfflineDecided};
use crate::metrics::Metrics;
use crate::occupancy::{OccupancyHandle, OccupancyMessage};
use crate::registry::{DeviceKind, Lot, Registry, RegistryHandle};
use parkflow_protocol::GateAction;
use parkflow_protocol::standing::{MAX_REPORTED, OfflineReport};

/// One rejection log line per reason per this interval; the counter counts them all.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why ingest refused a message (the `reason` label of `parkflow_events_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    UnknownTopic,
    Oversized,
    UnknownLot,
    UnknownGate,
    UnknownBay,
    UnknownDevice,
    NotRegistered,
    InvalidPlate,
    Message(&'static str),
}

impl Rejection {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::UnknownTopic => "unknown_topic",
            Self::Oversized => "oversized",
            Self::UnknownLot => "unknown_lot",
            Self::UnknownGate => "unknown_gate",
            Self::UnknownBay => "unknown_bay",
            Self::UnknownDevice => "unknown_device",
            Self::NotRegistered => "not_registered",
            Self::InvalidPlate => "invalid_plate",
            Self::Message(reason) => reason,
        }
    }
}

impl From<MessageError> for Rejection {
    fn from(error: MessageError) -> Self {
        Self::Message(error.reason())
    }
}

/// The ingest task's state.
pub(crate) struct Ingest {
    registry: RegistryHandle,
    metrics: Arc<Metrics>,
    gates: GateHandle,
    occupancy: OccupancyHandle,
    last_logged: HashMap<&'static str, (Instant, u64)>,
    /// The connection each bay sensor was last seen `online` with, by device (both hashed
    /// under a key of this process, so that a registry reload renumbering bays changes
    /// nothing): only that connection's `offline` turns its bay unknown.
    online: HashMap<u64, u64>,
    connections: RandomState,
    /// On a gateway node, the lots it runs: other lots' messages are not its own.
    ownership: Option<Arc<Ownership>>,
}

impl Ingest {
    pub(crate) fn new(
        registry: RegistryHandle,
        metrics: Arc<Metrics>,
        gates: GateHandle,
        occupancy: OccupancyHandle,
    ) -> Self {
        Self {
            registry,
            metrics,
            gates,
            occupancy,
            last_logged: HashMap::new(),
            online: HashMap::new(),
            connections: RandomState::new(),
            ownership: None,
        }
    }

    /// Takes only the messages of the lots `ownership` holds (a gateway node), and follows the
    /// other lots' availability as their owners publish it.
    pub(crate) fn with_ownership(mut self, ownership: Option<Arc<Ownership>>) -> Self {
        self.ownership = ownership;
        self
    }

    /// Runs until the event loop task stops, having handled everything queued.
    pub(crate) async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>) {
        while let Some(message) = inbound.recv().await {
            if let Err(rejection) = self.handle(message).await {
                self.reject(rejection);
            }
        }
        tracing::debug!("ingest drained and stopped");
    }

    async fn handle(&mut self, message: Inbound) -> Result<(), Rejection> {
        let topic = message
            .topic
            .as_ref()
            .map_err(|_| Rejection::UnknownTopic)?;
        if message.payload.len() > topic.max_payload_bytes() {
            return Err(Rejection::Oversized);
        }
        if let (Some(ownership), Some(lot)) = (&self.ownership, topic.lot())
            && !matches!(topic, Topic::LotAvailability { .. })
            && !ownership.holds(lot.as_str())
        {
            // Another node's lot: it arrived before the unsubscription took effect, or from
            // this node's persistent session kept while it was away. Handed on to its owner.
            if let Some(ticket) = message.ticket {
                ticket.forward();
            }
            return Err(Rejection::Message("lot_not_held"));
        }
        let registry = self.registry.snapshot();
        match topic {
            Topic::GatePlate { lot, gate } => {
                let lot = registry.lot_by_id(lot).ok_or(Rejection::UnknownLot)?;
                let read: GatePlateRead =
                    open_from_gate(&registry, lot, gate, topic, &message.payload)?;
                let clock = check_observed_at(read.observed_at, message.received_at);
                if !(0.0..=1.0).contains(&read.confidence) {
                    return Err(Rejection::Message("malformed"));
                }
                let plate = Plate::parse(&read.plate).map_err(|_| Rejection::InvalidPlate)?;
                self.metrics.plate_reads.inc();
                let read = GateRead {
                    lot: lot.id.clone(),
                    gate: gate.clone(),
                    event_id: read.event_id,
                    plate,
                    plate_color: read.plate_color,
                    confidence: read.confidence,
                    direction: read.direction,
                    observed_at: read.observed_at,
                    received_at: message.received_at,
                    received: message.received,
                    ticket: message.ticket,
                };
                if let Err(error) = clock {
                    // The camera is who it says it is, but its clock is off: counted as refused,
                    // and answered with a `hold` (`device_clock`) so the lane calls an attendant.
                    self.reject(error.into());
                    self.gates.clock_refused(read).await;
                    return Ok(());
                }
                self.gates.plate_read(read).await;
                Ok(())
            }
            Topic::GateOffline { lot, gate } => {
                let lot = registry.lot_by_id(lot).ok_or(Rejection::UnknownLot)?;
                let report: OfflineReport =
                    open_from_gate(&registry, lot, gate, topic, &message.payload)?;
                if report.decisions.len() > MAX_REPORTED {
                    return Err(Rejection::Message("malformed"));
                }
                let mut decisions = Vec::with_capacity(report.decisions.len());
                let mut unusable = Vec::new();
                for decision in report.decisions {
                    // A decision whose time cannot be trusted cannot open or close a stay; it
                    // is acknowledged all the same, or the lane would send it for ever.
                    let usable = check_observed_at(decision.observed_at, message.received_at)
                        .map_err(Rejection::from)
                        .and_then(|()| {
                            Plate::parse(&decision.plate).map_err(|_| Rejection::InvalidPlate)
                        })
                        .and_then(|plate| match decision.action {
                            GateAction::AckOffline => Err(Rejection::Message("malformed")),
                            _ => Ok(plate),
                        });
                    let plate = match usable {
                        Ok(plate) => plate,
                        Err(rejection) => {
                            self.reject(rejection);
                            unusable.push(decision.event_id);
                            continue;
                        }
                    };
                    decisions.push(OfflineDecided {
                        read: GateRead {
                            lot: lot.id.clone(),
                            gate: gate.clone(),
                            event_id: decision.event_id,
                            plate,
                            plate_color: decision.plate_color,
                            // The lane does not say; its decision stands whatever it was.
                            confidence: 1.0,
                            direction: decision.direction,
                            observed_at: decision.observed_at,
                            received_at: message.received_at,
                            received: message.received,
                            ticket: None,
                        },
                        action: decision.action,
                        reason: decision.reason,
                        standing_version: decision.standing_version,
                    });
                }
                self.gates
                    .send_here(GateMessage::Offline(Box::new(GateOfflineReport {
                        lot: lot.id.clone(),
                        gate: gate.clone(),
                        decisions,
                        unusable,
                        ticket: message.ticket,
                    })))
                    .await;
                Ok(())
            }
            Topic::GateState { lot, gate } => {
                let lot = registry.lot_by_id(lot).ok_or(Rejection::UnknownLot)?;
                let state: GateState =
                    open_from_gate(&registry, lot, gate, topic, &message.payload)?;
                tracing::debug!(lot = %lot.id, gate = %gate, state = ?state.state, "gate state");
                self.gates.lanes().barrier_reported(&lot.id, gate, state);
                Ok(())
            }
            Topic::BayOccupancy { lot, bay } => {
                let event = bay_ingest::occupancy(
                    &registry,
                    lot,
                    bay,
                    topic,
                    &message.payload,
                    message.received_at,
                )?;
                self.occupancy
                    .send(OccupancyMessage::Events {
                        registry,
                        events: vec![event],
                        ticket: message.ticket,
                    })
                    .await;
                Ok(())
            }
            Topic::BayHeartbeat { lot, bay } => {
                let beat = bay_ingest::heartbeat(
                    &registry,
                    lot,
                    bay,
                    topic,
                    &message.payload,
                    message.received_at,
                )?;
                self.occupancy
                    .send(OccupancyMessage::Heartbeat { registry, beat })
                    .await;
                Ok(())
            }
            Topic::BayPlate { lot, bay } => {
                let (bay, read) = bay_ingest::plate(
                    &registry,
                    lot,
                    bay,
                    topic,
                    &message.payload,
                    message.received_at,
                )?;
                self.occupancy
                    .send(OccupancyMessage::Plate {
                        registry,
                        bay,
                        read,
                        ticket: message.ticket,
                    })
                    .await;
                Ok(())
            }
            Topic::BridgeOccupancy { device } => {
                let (events, rejected) = bay_ingest::bridge(
                    &registry,
                    device,
                    topic,
                    &message.payload,
                    message.received_at,
                )?;
                for rejection in rejected {
                    self.reject(rejection);
                }
                self.occupancy
                    .send(OccupancyMessage::Events {
                        registry,
                        events,
                        ticket: message.ticket,
                    })
                    .await;
                Ok(())
            }
            Topic::DeviceStatus { device } => {
                let (sensor, report) =
                    bay_ingest::status(&registry, device, topic, &message.payload)?;
                let connection = self.connections.hash_one(&report.connection);
                let sensor_key = self.connections.hash_one(device.as_str());
                match (report.status, sensor) {
                    // The bay stays unknown until its sensor speaks.
                    (DeviceStatus::Online, Some(_)) => {
                        self.online.insert(sensor_key, connection);
                    }
                    (DeviceStatus::Offline, Some(bay)) => {
                        if self.online.get(&sensor_key) != Some(&connection) {
                            // An earlier connection's will, or a replay: the sensor is not
                            // known to be offline.
                            return Err(Rejection::Message("stale_status"));
                        }
                        self.online.remove(&sensor_key);
                        self.occupancy
                            .send(OccupancyMessage::Offline { registry, bay })
                            .await;
                    }
                    (status, None) => {
                        tracing::debug!(device = %device, status = status.as_str(), "device status");
                    }
                }
                Ok(())
            }
            Topic::LotAvailability { lot } if self.ownership.is_some() => {
                let availability: parkflow_protocol::Availability =
                    serde_json::from_slice(&message.payload)
                        .map_err(|_| Rejection::Message("malformed"))?;
                if &availability.lot != lot {
                    return Err(Rejection::Message("topic_mismatch"));
                }
                self.occupancy
                    .send(OccupancyMessage::Remote(availability))
                    .await;
                Ok(())
            }
            _ => Err(Rejection::UnknownTopic),
        }
    }

    fn reject(&mut self, rejection: Rejection) {
        let reason = rejection.reason();
        self.metrics.rejected(reason);
        let now = Instant::now();
        let entry = self
            .last_logged
            .entry(reason)
            .or_insert((now - LOG_INTERVAL, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= LOG_INTERVAL {
            tracing::warn!(reason, count = entry.1, "rejected device messages");
            *entry = (now, 0);
        }
    }
}

/// Opens a message published on a gate's topic: it must come from the camera registered to that
/// gate (when signed), and the gate must exist.
fn open_from_gate<T: DeserializeOwned>(
    registry: &Registry,
    lot: &Lot,
    gate: &GateId,
    topic: &Topic,
    payload: &[u8],
) -> Result<T, Rejection> {
    registry.gate(lot.idx, gate).ok_or(Rejection::UnknownGate)?;
    let opened = open(payload, &topic.to_string(), lot.device_auth, |id| {
        registry
            .device(id)
            .map(|device| device.secret.expose_secret().to_owned())
    })?;
    if let Some(signer) = &opened.signer {
        let device = registry.device(signer).ok_or(Rejection::NotRegistered)?;
        let speaks_for_gate = device.kind == DeviceKind::GateCamera
            && device.lot.as_ref() == Some(&lot.id)
            && device.gate.as_ref() == Some(gate);
        if !speaks_for_gate {
            return Err(Rejection::NotRegistered);
        }
    }
    Ok(opened.body)
}
