//! The MQTT topics of protocol v1 (SPEC §2), parsed and formatted in this one place.

use std::fmt;

use crate::id::{BayId, DeviceId, GateId, IdError, LotId};

/// Every ParkFlow topic starts with this.
pub const PREFIX: &str = "parkflow/v1/";

/// A topic of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    BayOccupancy { lot: LotId, bay: BayId },
    BayHeartbeat { lot: LotId, bay: BayId },
    BayPlate { lot: LotId, bay: BayId },
    GatePlate { lot: LotId, gate: GateId },
    GateCommand { lot: LotId, gate: GateId },
    GateState { lot: LotId, gate: GateId },
    GateStanding { lot: LotId, gate: GateId },
    GateOffline { lot: LotId, gate: GateId },
    BridgeOccupancy { device: DeviceId },
    LotAvailability { lot: LotId },
    DeviceStatus { device: DeviceId },
}

/// Why a topic string is not a protocol v1 topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic does not start with {PREFIX}")]
    Prefix,
    #[error("topic has no meaning in protocol v1")]
    Unknown,
    #[error("topic has an invalid id")]
    Id(#[from] IdError),
}

impl Topic {
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic.strip_prefix(PREFIX).ok_or(TopicError::Prefix)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let topic = match parts.as_slice() {
            ["lots", lot, "bays", bay, leaf] => {
                let (lot, bay) = (LotId::parse(lot)?, BayId::parse(bay)?);
                match *leaf {
                    "occupancy" => Self::BayOccupancy { lot, bay },
                    "heartbeat" => Self::BayHeartbeat { lot, bay },
                    "plate" => Self::BayPlate { lot, bay },
                    _ => return Err(TopicError::Unknown),
                }
            }
            ["lots", lot, "gates", gate, leaf] => {
                let (lot, gate) = (LotId::parse(lot)?, GateId::parse(gate)?);
                match *leaf {
                    "plate" => Self::GatePlate { lot, gate },
                    "command" => Self::GateCommand { lot, gate },
                    "state" => Self::GateState { lot, gate },
                    "standing" => Self::GateStanding { lot, gate },
                    "offline" => Self::GateOffline { lot, gate },
                    _ => return Err(TopicError::Unknown),
                }
            }
            ["bridge", device, "occupancy"] => Self::BridgeOccupancy {
                device: DeviceId::parse(device)?,
            },
            ["lots", lot, "availability"] => Self::LotAvailability {
                lot: LotId::parse(lot)?,
            },
            ["devices", device, "status"] => Self::DeviceStatus {
                device: DeviceId::parse(device)?,
            },
            _ => return Err(TopicError::Unknown),
        };
        Ok(topic)
    }

    /// The lot the topic belongs to, if any.
    pub fn lot(&self) -> Option<&LotId> {
        match self {
            Self::BayOccupancy { lot, .. }
            | Self::BayHeartbeat { lot, .. }
            | Self::BayPlate { lot, .. }
            | Self::GatePlate { lot, .. }
            | Self::GateCommand { lot, .. }
            | Self::GateState { lot, .. }
            | Self::GateStanding { lot, .. }
            | Self::GateOffline { lot, .. }
            | Self::LotAvailability { lot } => Some(lot),
            Self::BridgeOccupancy { .. } | Self::DeviceStatus { .. } => None,
        }
    }

    /// The largest payload accepted on this topic: a bridge batch carries up to 1,000 events,
    /// an offline report up to 100 decisions.
    pub fn max_payload_bytes(&self) -> usize {
        match self {
            Self::BridgeOccupancy { .. } => 512 * 1024,
            Self::GateOffline { .. } => 64 * 1024,
            _ => 8 * 1024,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BayOccupancy { lot, bay } => write!(f, "{PREFIX}lots/{lot}/bays/{bay}/occupancy"),
            Self::BayHeartbeat { lot, bay } => write!(f, "{PREFIX}lots/{lot}/bays/{bay}/heartbeat"),
            Self::BayPlate { lot, bay } => write!(f, "{PREFIX}lots/{lot}/bays/{bay}/plate"),
            Self::GatePlate { lot, gate } => write!(f, "{PREFIX}lots/{lot}/gates/{gate}/plate"),
            Self::GateCommand { lot, gate } => write!(f, "{PREFIX}lots/{lot}/gates/{gate}/command"),
            Self::GateState { lot, gate } => write!(f, "{PREFIX}lots/{lot}/gates/{gate}/state"),
            Self::GateStanding { lot, gate } => {
                write!(f, "{PREFIX}lots/{lot}/gates/{gate}/standing")
            }
            Self::GateOffline { lot, gate } => write!(f, "{PREFIX}lots/{lot}/gates/{gate}/offline"),
            Self::BridgeOccupancy { device } => write!(f, "{PREFIX}bridge/{device}/occupancy"),
            Self::LotAvailability { lot } => write!(f, "{PREFIX}lots/{lot}/availability"),
            Self::DeviceStatus { device } => write!(f, "{PREFIX}devices/{device}/status"),
        }
    }
}

/// Subscription filters, built here so no other crate formats a topic by hand.
pub mod filter {
    use super::PREFIX;
    use crate::id::LotId;

    /// Everything devices publish about one lot (a gateway that owns a partition subscribes per lot).
    pub fn lot(lot: &LotId) -> String {
        format!("{PREFIX}lots/{lot}/#")
    }

    /// One lot's gate plate reads.
    pub fn lot_gate_plates(lot: &LotId) -> String {
        format!("{PREFIX}lots/{lot}/gates/+/plate")
    }

    /// One lot's gate state reports.
    pub fn lot_gate_states(lot: &LotId) -> String {
        format!("{PREFIX}lots/{lot}/gates/+/state")
    }

    /// One lot's lanes' reports of decisions made alone.
    pub fn lot_gate_offline(lot: &LotId) -> String {
        format!("{PREFIX}lots/{lot}/gates/+/offline")
    }

    /// One lot's bay sensors' and bay cameras' messages.
    pub fn lot_bays(lot: &LotId) -> String {
        format!("{PREFIX}lots/{lot}/bays/+/+")
    }

    /// One bridge's batches.
    pub fn bridge(device: &crate::id::DeviceId) -> String {
        format!("{PREFIX}bridge/{device}/occupancy")
    }

    /// Every lot's retained availability (a gateway node follows the lots other nodes run).
    pub fn all_availability() -> String {
        format!("{PREFIX}lots/+/availability")
    }

    /// Every gate plate read of every lot.
    pub fn all_gate_plates() -> String {
        format!("{PREFIX}lots/+/gates/+/plate")
    }

    /// Every gate state report of every lot.
    pub fn all_gate_states() -> String {
        format!("{PREFIX}lots/+/gates/+/state")
    }

    /// Every lane's reports of decisions made alone.
    pub fn all_gate_offline() -> String {
        format!("{PREFIX}lots/+/gates/+/offline")
    }

    /// Every bay sensor's and bay camera's messages (occupancy, heartbeat, plate) of every lot.
    pub fn all_bays() -> String {
        format!("{PREFIX}lots/+/bays/+/+")
    }

    /// Every bridge's batches.
    pub fn all_bridges() -> String {
        format!("{PREFIX}bridge/+/occupancy")
    }

    /// Every device's online/offline status.
    pub fn all_device_status() -> String {
        format!("{PREFIX}devices/+/status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lot() -> LotId {
        LotId::parse("lot-1").unwrap()
    }

    #[test]
    fn every_topic_round_trips() {
        let bay = BayId::parse("b7").unwrap();
        let gate = GateId::parse("north-in").unwrap();
        let device = DeviceId::parse("cam-3").unwrap();
        let topics = [
            Topic::BayOccupancy {
                lot: lot(),
                bay: bay.clone(),
            },
            Topic::BayHeartbeat {
                lot: lot(),
                bay: bay.clone(),
            },
            Topic::BayPlate { lot: lot(), bay },
            Topic::GatePlate {
                lot: lot(),
                gate: gate.clone(),
            },
            Topic::GateCommand {
                lot: lot(),
                gate: gate.clone(),
            },
            Topic::GateState {
                lot: lot(),
                gate: gate.clone(),
            },
            Topic::GateStanding {
                lot: lot(),
                gate: gate.clone(),
            },
            Topic::GateOffline { lot: lot(), gate },
            Topic::BridgeOccupancy {
                device: device.clone(),
            },
            Topic::LotAvailability { lot: lot() },
            Topic::DeviceStatus { device },
        ];
        for topic in topics {
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }
    }

    #[test]
    fn spec_examples_parse() {
        assert_eq!(
            Topic::parse("parkflow/v1/lots/lot-1/gates/g1/plate").unwrap(),
            Topic::GatePlate {
                lot: lot(),
                gate: GateId::parse("g1").unwrap()
            }
        );
    }

    #[test]
    fn foreign_and_malformed_topics_are_rejected() {
        assert_eq!(
            Topic::parse("other/v1/lots/a/availability"),
            Err(TopicError::Prefix)
        );
        assert_eq!(
            Topic::parse("parkflow/v2/lots/a/availability"),
            Err(TopicError::Prefix)
        );
        assert_eq!(
            Topic::parse("parkflow/v1/lots/a/gates/g/open"),
            Err(TopicError::Unknown)
        );
        assert_eq!(
            Topic::parse("parkflow/v1/lots/a/gates/g/plate/x"),
            Err(TopicError::Unknown)
        );
        assert!(matches!(
            Topic::parse("parkflow/v1/lots/A/gates/g/plate"),
            Err(TopicError::Id(_))
        ));
        assert!(matches!(
            Topic::parse("parkflow/v1/lots/+/gates/g/plate"),
            Err(TopicError::Id(_))
        ));
        assert!(matches!(
            Topic::parse("parkflow/v1/lots//availability"),
            Err(TopicError::Id(_))
        ));
    }

    proptest! {
        #[test]
        fn gate_topics_round_trip(lot in "[a-z0-9][a-z0-9-]{0,63}", gate in "[a-z0-9][a-z0-9-]{0,63}") {
            let topic = Topic::GatePlate { lot: LotId::parse(&lot).unwrap(), gate: GateId::parse(&gate).unwrap() };
            prop_assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,80}") {
            let _ = Topic::parse(&s);
        }
    }
}
