//! Which database and broker a test runs against.

use super::*;
use parkflow_protocol::DeviceAuth;

/// Which database the platform uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
}

/// Which broker the platform uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Embedded,
    Mosquitto,
}

/// A combination to test; `None` from [`Setup::available`] when its services are not switched on.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub database: Database,
    pub broker: Broker,
}

impl Setup {
    pub fn available(database: Database, broker: Broker) -> Option<Self> {
        init_logs();
        for (on, var) in [
            (database == Database::Postgres, "PARKFLOW_TEST_POSTGRES_URL"),
            (broker == Broker::Mosquitto, "PARKFLOW_TEST_MQTT_URL"),
        ] {
            if on && std::env::var(var).is_err() {
                // CI runs every variant: a missing service there is a failure, not a skip.
                assert!(std::env::var("CI").is_err(), "CI must set {var}");
                eprintln!("skipped: set {var} to run this test against the real service");
                return None;
            }
        }
        Some(Self { database, broker })
    }

    /// With an external broker that enforces ACLs, lots accept plain JSON (SPEC §2 `broker` mode).
    pub fn device_auth(&self) -> DeviceAuth {
        match self.broker {
            Broker::Embedded => DeviceAuth::Signed,
            Broker::Mosquitto => DeviceAuth::Broker,
        }
    }
}
