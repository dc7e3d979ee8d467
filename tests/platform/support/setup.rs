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
    /// Mosquitto that lets anyone do anything (`PARKFLOW_TEST_MQTT_URL`).
    Mosquitto,
    /// Mosquitto with the dynamic-security plugin, whose permissions the platform keeps
    /// (`PARKFLOW_TEST_DYNSEC_URL`, `mqtt://ADMIN:PASSWORD@host:port`).
    MosquittoDynsec,
}

impl Broker {
    /// Whether devices log in with their credentials (an open Mosquitto takes anyone).
    pub fn checks_logins(self) -> bool {
        self != Self::Mosquitto
    }

    /// Whether the broker holds each device to its own topics (the embedded broker and dynsec
    /// Mosquitto): a message beyond them never reaches the platform.
    pub fn holds_devices_to_their_topics(self) -> bool {
        self != Self::Mosquitto
    }

    /// Whether the broker outlives the platform (and keeps its persistent sessions).
    pub fn is_external(self) -> bool {
        self != Self::Embedded
    }

    /// The external broker's URL.
    pub fn url(self) -> Option<url::Url> {
        let var = match self {
            Self::Embedded => return None,
            Self::Mosquitto => "PARKFLOW_TEST_MQTT_URL",
            Self::MosquittoDynsec => "PARKFLOW_TEST_DYNSEC_URL",
        };
        Some(url::Url::parse(&std::env::var(var).ok()?).expect("a broker URL"))
    }
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
            (
                broker == Broker::MosquittoDynsec,
                "PARKFLOW_TEST_DYNSEC_URL",
            ),
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

    /// With an external broker, lots accept plain JSON (SPEC §2 `broker` mode): on the open
    /// Mosquitto that is the protocol's test, on the dynsec one its production use.
    pub fn device_auth(&self) -> DeviceAuth {
        match self.broker {
            Broker::Embedded => DeviceAuth::Signed,
            Broker::Mosquitto | Broker::MosquittoDynsec => DeviceAuth::Broker,
        }
    }
}
