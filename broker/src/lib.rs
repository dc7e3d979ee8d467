//! The embedded MQTT broker: rumqttd on a tokio runtime that ParkFlow owns, so that it can be
//! started and stopped (tests restart it), with device logins checked by an [`Authenticator`] and
//! TCP_NODELAY on every accepted socket (the barrier's latency depends on it, see `nodelay`).

mod app;
mod config;
mod nodelay;

pub use app::{BrokerError, EmbeddedBroker};
pub use config::{Authenticator, BrokerConfig, Login, TlsListener};
