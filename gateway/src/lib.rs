//! The gateway: MQTT ingest, gate decisions, parking sessions, storage and the HTTP API.
//!
//! A plate read flows `mqtt::link` → `mqtt::ingest` → `gate::actor` (decides and publishes the
//! barrier command) → `store::writer` (group commit) → `mqtt::ack` (acknowledged once durable).
//! See ARCHITECTURE.md for the whole picture.

pub mod app;
pub mod availability;
pub mod config;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod occupancy;
pub mod privacy;
pub mod registry;
pub mod session;
pub mod store;

pub use app::{Gateway, GatewayError};
pub use config::GatewayConfig;
