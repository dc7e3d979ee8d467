//! What devices and the platform share (SPEC §2): topics, payloads, ids, plates and message
//! signing. No IO and no async: every ParkFlow crate and every device may depend on it.

pub mod id;
pub mod message;
pub mod plate;
pub mod sign;
pub mod standing;
pub mod time;
pub mod topic;

pub use id::{BayId, DeviceId, EventId, GateId, IdError, LotId};
pub use message::*;
pub use plate::{Plate, PlateColor, PlateError};
pub use sign::{DeviceAuth, MessageError, Opened};
pub use topic::{Topic, TopicError};
