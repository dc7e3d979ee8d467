//! The platform's MQTT side: one persistent connection (clean_session = false) that subscribes to
//! what devices publish, forwards each message to ingest, acknowledges it once it is durable, and
//! publishes barrier commands.
//!
//! The event loop task only polls, stamps and forwards (`link`); verification and decoding happen
//! in `ingest`; acknowledgements go out in arrival order from `ack`; commands are signed in `publish`.

pub mod ack;
pub mod bay_ingest;
pub mod ingest;
pub mod link;
pub mod publish;

pub use link::MqttConfig;
