//! The embedded MQTT broker: rumqttd on a tokio runtime that ParkFlow owns, so that it can be
//! started and stopped (tests restart it), with device logins checked by an [`Authenticator`], each
//! client held to its [`Permissions`] (topics, retained messages, packet size: see `guard`), and
//! TCP_NODELAY on every accepted socket (the barrier's latency depends on it, see `nodelay`).

mod app;
mod config;
mod guard;
mod nodelay;

pub use app::{BrokerError, EmbeddedBroker};
pub use config::{Authenticator, BrokerConfig, DEFAULT_LOG_MIB, Login, TlsListener};
pub use guard::{Anyone, Permissions, Unrestricted};
