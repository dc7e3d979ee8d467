//! The `parkflow` binary's library: composes the embedded broker, the gateway and the demo city
//! into one platform. `main.rs` parses the command line; tests start a [`Platform`] directly.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod logging;
pub mod platform;
pub mod sim;

pub use platform::{MqttSetup, Platform, PlatformConfig};
