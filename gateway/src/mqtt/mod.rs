//! The platform's MQTT side: two persistent connections (clean_session = false) — one for gate
//! cameras, one (`{client id}-bays`) for bay sensors, cameras and bridges — each subscribing to
//! what its devices publish, forwarding each message to ingest and acknowledging it once it is
//! durable; the first also publishes barrier commands, the second the retained availability.
//!
//! The event loop task only polls, stamps and forwards (`link`); verification and decoding happen
//! in `ingest`; acknowledgements go out in arrival order from `ack`; commands are signed in `publish`.

pub(crate) mod ack;
pub(crate) mod bay_ingest;
pub(crate) mod dynsec;
pub(crate) mod ingest;
pub(crate) mod kick;
pub(crate) mod link;
pub(crate) mod publish;

pub use link::{MqttConfig, MqttTls};
