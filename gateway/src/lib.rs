//! The gateway: MQTT ingest, gate decisions, parking sessions, storage and the HTTP API.
//!
//! A plate read flows `mqtt::link` → `mqtt::ingest` → `gate::actor` (decides and publishes the
//! barrier command) → `store::writer` (group commit) → `mqtt::ack` (acknowledged once durable).
//! See ARCHITECTURE.md for the whole picture.

//! Public: what the `parkflow` binary composes (the gateway, its configuration, provisioning,
//! the registry and the privacy job), and what its benches and tests drive. Everything else is
//! `pub(crate)`; `unreachable_pub` keeps it so.

#![warn(unreachable_pub)]

mod anpr;
mod app;
mod availability;
pub mod cluster;
mod config;
pub mod gate;
mod http;
pub mod metrics;
mod mqtt;
pub mod occupancy;
pub mod privacy;
pub mod registry;
pub mod session;
pub mod store;
mod ui;

pub use anpr::Vendor;
pub use app::{Gateway, GatewayError};
pub use config::{BrokerAcl, GatewayConfig};
pub use http::auth::constant_time_eq;
pub use mqtt::dynsec::DynsecError;
pub use mqtt::{MqttConfig, MqttTls};
