//! The simulated city: gate cameras (and, later, bay sensors) that speak ParkFlow's MQTT protocol
//! exactly as an outside device would — signed messages, retries until answered — and the traffic
//! that drives them. It depends on `parkflow-protocol` alone: it knows the platform only through
//! the protocol and the devices file.

pub mod camera;
pub mod city;
pub mod clock;
pub mod devices;
pub mod journal;
pub mod presence;
pub mod stats;
pub mod street;
pub mod traffic;
pub mod verify;

pub use city::{City, CityConfig, Zone};
pub use devices::{DeviceEntry, DeviceKind, DevicesFile};
pub use stats::Stats;
