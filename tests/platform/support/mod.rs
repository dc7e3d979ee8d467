//! What the whole-platform tests share: a platform on free ports with a fresh database, devices
//! that speak the protocol, and `eventually`.
//!
//! PostgreSQL and Mosquitto tests run when `PARKFLOW_TEST_POSTGRES_URL` (an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/test`; each test gets a database of its own) and
//! `PARKFLOW_TEST_MQTT_URL` (`mqtt://127.0.0.1:1883`) are set; `.ci/run` sets both.

pub mod browser;
mod database;
mod device;
mod platform;
mod setup;
mod world;

pub use database::TestDatabase;
pub use device::TestDevice;
pub use platform::{TestPlatform, admin_login};
pub use setup::{Broker, Database, Setup};
pub use world::World;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Whole-platform tests of `scenario` (an `async fn(Setup)`) on each database with the embedded
/// broker: `scenario::on_sqlite`, and `scenario::on_postgres` (skipped, outside CI, when
/// PostgreSQL is not configured).
macro_rules! on_each_database {
    ($scenario:ident) => {
        mod $scenario {
            use $crate::support::{Broker, Database, Setup};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                let setup = Setup::available(Database::Sqlite, Broker::Embedded);
                super::$scenario(setup.expect("sqlite is always available")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if let Some(setup) = Setup::available(Database::Postgres, Broker::Embedded) {
                    super::$scenario(setup).await;
                }
            }
        }
    };
}

pub const ADMIN_KEY: &str = "test-admin-key";

/// The key device secrets are sealed under in tests.
pub const SECRETS_KEY: &str = "test-secrets-key-of-thirty-two-chars";

/// The simulated vehicle register's secret in tests.
pub const VEHICLE_REGISTER_SECRET: &str = "test-vehicle-register";

/// The number on `plate`'s registration document, as its owner would show it.
pub fn registration_document(plate: &str) -> String {
    parkflow_billing::claims::SimulatedRegister::new(VEHICLE_REGISTER_SECRET.into())
        .document(&parkflow_protocol::Plate::parse(plate).expect("a plate"))
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Waits until `check` returns `Some`, polling; panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
