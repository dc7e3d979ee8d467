//! One ParkFlow platform in one process: the embedded MQTT broker (unless an external one is
//! given) and the gateway, sharing the device registry for broker logins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use parkflow_broker::{Authenticator, BrokerConfig, EmbeddedBroker};
use parkflow_gateway::gate::actor::DecisionConfig;
use parkflow_gateway::mqtt::MqttConfig;
use parkflow_gateway::registry::RegistryHandle;
use parkflow_gateway::store::Db;
use parkflow_gateway::store::provision::{Plan, provision};
use parkflow_gateway::{Gateway, GatewayConfig};
use tokio_util::sync::CancellationToken;

/// The MQTT user the platform itself logs in as on the embedded broker.
const PLATFORM_USER: &str = "parkflow-platform";

/// Which broker the platform uses.
#[derive(Debug, Clone)]
pub enum MqttSetup {
    /// Start the embedded broker on this address.
    Embedded { listen: SocketAddr },
    /// Connect to an external broker.
    External {
        host: String,
        port: u16,
        credentials: Option<(String, String)>,
    },
}

/// Everything the platform needs to start.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub http_listen: SocketAddr,
    pub database_url: String,
    pub mqtt: MqttSetup,
    /// The platform's MQTT client id; the broker keeps its persistent session under it.
    pub mqtt_client_id: String,
    pub admin_key: Option<String>,
    pub decisions: DecisionConfig,
}

/// Broker logins: the platform's own, or a registered device's.
struct Logins {
    platform_password: String,
    registry: RegistryHandle,
}

impl Authenticator for Logins {
    fn authenticate(&self, client_id: &str, username: &str, password: &str) -> bool {
        if username == PLATFORM_USER {
            return password.len() == self.platform_password.len()
                && password
                    .bytes()
                    .zip(self.platform_password.bytes())
                    .fold(0, |acc, (a, b)| acc | (a ^ b))
                    == 0;
        }
        self.registry
            .snapshot()
            .authenticate(client_id, username, password)
    }
}

/// A platform, built and ready to run.
pub struct Platform {
    gateway: Gateway,
    broker: Option<EmbeddedBroker>,
    mqtt_addr: (String, u16),
}

impl Platform {
    /// Opens the database, loads the registry, binds the HTTP listener and starts the embedded broker.
    pub async fn build(config: PlatformConfig) -> anyhow::Result<Self> {
        let platform_password = random_secret();
        let (host, port, credentials) = match &config.mqtt {
            MqttSetup::Embedded { listen } => (
                listen.ip().to_string(),
                listen.port(),
                Some((PLATFORM_USER.to_owned(), platform_password.clone())),
            ),
            MqttSetup::External {
                host,
                port,
                credentials,
            } => (host.clone(), *port, credentials.clone()),
        };
        let gateway = Gateway::build(GatewayConfig {
            http_listen: config.http_listen,
            database_url: config.database_url.clone(),
            mqtt: MqttConfig {
                host: host.clone(),
                port,
                client_id: config.mqtt_client_id.clone(),
                credentials,
                keep_alive: Duration::from_secs(30),
                inflight: 1_000,
            },
            decisions: config.decisions.clone(),
            admin_key: config.admin_key.clone(),
        })
        .await
        .context("failed to build the gateway")?;

        let broker = match config.mqtt {
            MqttSetup::Embedded { listen } => {
                let logins = Arc::new(Logins {
                    platform_password,
                    registry: gateway.registry(),
                });
                let broker_config = BrokerConfig::new(listen, logins);
                let broker =
                    tokio::task::spawn_blocking(move || EmbeddedBroker::start(broker_config))
                        .await
                        .context("embedded broker start-up panicked")??;
                Some(broker)
            }
            MqttSetup::External { .. } => None,
        };
        Ok(Self {
            gateway,
            broker,
            mqtt_addr: (host, port),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    /// Where devices connect.
    pub fn mqtt_addr(&self) -> (String, u16) {
        self.mqtt_addr.clone()
    }

    pub fn db(&self) -> Db {
        self.gateway.db()
    }

    pub fn registry(&self) -> RegistryHandle {
        self.gateway.registry()
    }

    /// Writes `plan` to the database and reloads the registry (before `run`).
    pub async fn provision(&self, plan: &Plan) -> anyhow::Result<()> {
        let db = self.db();
        provision(&db, plan, Utc::now())
            .await
            .context("failed to provision")?;
        self.registry()
            .reload(&db)
            .await
            .context("failed to reload the registry")?;
        Ok(())
    }

    /// Runs until `token` is cancelled, then drains the gateway and stops the broker.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let result = self.gateway.run(token).await;
        if let Some(broker) = self.broker {
            broker.stop();
        }
        result.context("gateway failed")
    }
}

/// A random secret of 32 bytes, URL-safe base64.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
