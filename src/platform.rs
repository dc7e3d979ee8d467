//! One ParkFlow platform in one process: the embedded MQTT broker (unless an external one is
//! given), the gateway, and billing's workers, sharing the device registry for broker logins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use parkflow_billing::arrears::{ArrearsConfig, ArrearsWorker, STANDING_CHANNEL_CAPACITY};
use parkflow_billing::charging::{ChargingConfig, ChargingWorker};
use parkflow_billing::payments::Payments;
use parkflow_billing::provider::{FaultConfig, SimulatedProvider};
use parkflow_broker::{
    Authenticator, BrokerConfig, EmbeddedBroker, Login, Permissions, TlsListener,
};
use parkflow_gateway::gate::GateMessage;
use parkflow_gateway::gate::actor::DecisionConfig;
use parkflow_gateway::occupancy::OccupancyConfig;
use parkflow_gateway::privacy::{PlateKey, RetentionConfig, run_retention};
use parkflow_gateway::registry::RegistryHandle;
use parkflow_gateway::registry::access::{self, Grants, PlatformLogin};
pub use parkflow_gateway::registry::{mqtt_password, random_device_key, random_secret};
use parkflow_gateway::store::Db;
use parkflow_gateway::store::provision::{Plan, provision};
use parkflow_gateway::{BrokerAcl, Gateway, GatewayConfig, MqttConfig, MqttTls};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The MQTT user the platform itself logs in as on the embedded broker.
pub const PLATFORM_USER: &str = "parkflow-platform";

/// Which broker the platform uses.
#[derive(Debug, Clone)]
pub enum MqttSetup {
    /// Start the embedded broker on this address.
    Embedded { listen: SocketAddr },
    /// Connect to an external broker.
    External {
        host: String,
        port: u16,
        /// User name and password.
        credentials: Option<(String, SecretString)>,
        /// `mqtts://`: TLS to the broker.
        tls: Option<MqttTls>,
    },
}

/// Everything the platform needs to start; printed, it shows none of its secrets.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub http_listen: SocketAddr,
    /// `sqlite:FILE` or `postgres://…` (a URL may carry a password).
    pub database_url: SecretString,
    pub mqtt: MqttSetup,
    /// The platform's MQTT client id; the broker keeps its persistent session under it.
    pub mqtt_client_id: String,
    pub admin_key: Option<SecretString>,
    pub broker_hook_key: Option<SecretString>,
    /// An external broker's permissions kept by the platform (`--broker-acl`).
    pub broker_acl: Option<BrokerAcl>,
    /// The embedded broker's TLS listener, if any.
    pub mqtt_tls: Option<TlsListener>,
    /// The embedded broker's in-memory log per subscription filter, in bytes (eight segments).
    pub mqtt_log_bytes: usize,
    /// The password of [`PLATFORM_USER`] at the embedded broker (random when `None`).
    pub mqtt_platform_password: Option<SecretString>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open availability streams per client address, and in all.
    pub max_streams_per_address: u32,
    pub max_streams: u32,
    /// `/metrics` without a key, on a private address.
    pub metrics_listen: Option<SocketAddr>,
    /// One of several gateway nodes (README, "Running more than one node").
    pub node_id: Option<String>,
    pub decisions: DecisionConfig,
    pub occupancy: OccupancyConfig,
    /// Public reads allowed per client address per second.
    pub public_rate_per_second: u32,
    /// Driver endpoints' requests allowed per client address per second.
    pub driver_rate_per_second: u32,
    /// Faults the simulated payment provider injects (none by default).
    pub provider_faults: FaultConfig,
    pub charging: ChargingConfig,
    pub arrears: ArrearsConfig,
    /// How often the last days are settled again.
    pub settle_every: Duration,
    /// How long plates stay in clear.
    pub retention: RetentionConfig,
    /// The simulated vehicle register's secret (drivers prove plates with its documents).
    pub vehicle_register_secret: SecretString,
    /// How often each driver's payment mandate is asked about again.
    pub mandate_check: parkflow_billing::mandates::MandateCheck,
    /// The key device secrets are sealed under at rest.
    pub secrets_key: Option<SecretString>,
    /// ANPR barrier calls may go to this machine (a camera simulator or bench beside it).
    pub barrier_calls_to_loopback: bool,
}

impl PlatformConfig {
    /// The defaults around the addresses and the database.
    pub fn new(
        http_listen: SocketAddr,
        database_url: impl Into<SecretString>,
        mqtt: MqttSetup,
    ) -> Self {
        Self {
            http_listen,
            database_url: database_url.into(),
            mqtt,
            mqtt_client_id: "parkflow-gateway".into(),
            admin_key: None,
            broker_hook_key: None,
            broker_acl: None,
            mqtt_tls: None,
            mqtt_log_bytes: parkflow_broker::DEFAULT_LOG_MIB as usize * 1024 * 1024,
            mqtt_platform_password: None,
            trusted_proxies: Vec::new(),
            max_streams_per_address: 4,
            max_streams: 10_000,
            metrics_listen: None,
            node_id: None,
            decisions: DecisionConfig::default(),
            occupancy: OccupancyConfig::default(),
            public_rate_per_second: 50,
            driver_rate_per_second: 20,
            provider_faults: FaultConfig::none(),
            // Unique per process: leases name their holder.
            charging: ChargingConfig::new(format!(
                "charging-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
            arrears: ArrearsConfig::default(),
            settle_every: Duration::from_secs(600),
            retention: RetentionConfig::default(),
            vehicle_register_secret: random_secret().into(),
            mandate_check: parkflow_billing::mandates::MandateCheck::default(),
            secrets_key: None,
            barrier_calls_to_loopback: false,
        }
    }

    /// The gateway's part; on the embedded broker the platform logs in with `platform_password`.
    pub fn gateway_config(&self, platform_password: &str) -> GatewayConfig {
        let (host, port, credentials, tls) = match &self.mqtt {
            MqttSetup::Embedded { listen } => (
                listen.ip().to_string(),
                listen.port(),
                Some((PLATFORM_USER.to_owned(), platform_password.into())),
                None,
            ),
            MqttSetup::External {
                host,
                port,
                credentials,
                tls,
            } => (host.clone(), *port, credentials.clone(), tls.clone()),
        };
        GatewayConfig {
            http_listen: self.http_listen,
            database_url: self.database_url.clone(),
            mqtt: MqttConfig {
                host,
                port,
                client_id: self.mqtt_client_id.clone(),
                credentials,
                keep_alive: Duration::from_secs(30),
                inflight: 1_000,
                tls,
            },
            decisions: self.decisions.clone(),
            occupancy: self.occupancy.clone(),
            public_rate_per_second: self.public_rate_per_second,
            driver_rate_per_second: self.driver_rate_per_second,
            admin_key: self.admin_key.clone(),
            broker_hook_key: self.broker_hook_key.clone(),
            broker_acl: self.broker_acl,
            trusted_proxies: self.trusted_proxies.clone(),
            max_streams_per_address: self.max_streams_per_address,
            max_streams: self.max_streams,
            metrics_listen: self.metrics_listen,
            node_id: self.node_id.clone(),
            vehicle_register_secret: self.vehicle_register_secret.clone(),
            mandate_check: self.mandate_check,
            secrets_key: self.secrets_key.clone(),
            barrier_calls_to_loopback: self.barrier_calls_to_loopback,
        }
    }
}

/// Broker logins: the platform's own, or a registered device's.
struct Logins {
    platform: PlatformLogin,
    registry: RegistryHandle,
    db: Db,
}

impl Authenticator for Logins {
    fn authenticate(&self, client_id: String, username: String, password: String) -> Login {
        let (registry, db, platform) = (
            self.registry.snapshot(),
            self.db.clone(),
            self.platform.clone(),
        );
        Box::pin(async move {
            access::may_log_in(
                &registry,
                &db,
                Some(&platform),
                &client_id,
                &username,
                &password,
            )
            .await
        })
    }

    fn permissions(&self, client_id: &str, username: &str) -> Box<dyn Permissions> {
        let registry = self.registry.snapshot();
        let client = access::client(&registry, Some(&self.platform), client_id, username);
        Box::new(Held(Grants::of(client)))
    }
}

/// A client's grants, held to every packet it sends the embedded broker.
struct Held(Grants);

impl Permissions for Held {
    fn max_packet_bytes(&self) -> usize {
        self.0.max_packet_bytes()
    }

    fn may_publish(&self, topic: &str, retain: bool, payload_bytes: usize) -> bool {
        self.0.may_publish(topic, retain, payload_bytes)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.0.may_subscribe(filter)
    }
}

/// A platform, built and ready to run.
pub struct Platform {
    gateway: Gateway,
    broker: Option<EmbeddedBroker>,
    mqtt_addr: (String, u16),
    provider: SimulatedProvider,
    charging: ChargingConfig,
    arrears: ArrearsConfig,
    settle_every: Duration,
    retention: RetentionConfig,
    plate_key: PlateKey,
}

impl Platform {
    /// Opens the database, loads the registry and gate state, binds the HTTP listener and starts
    /// the embedded broker.
    pub async fn build(config: PlatformConfig) -> anyhow::Result<Self> {
        let platform_password = match &config.mqtt_platform_password {
            Some(password) => password.expose_secret().to_owned(),
            None => random_secret(),
        };
        let gateway_config = config.gateway_config(&platform_password);
        let host = gateway_config.mqtt.host.clone();
        let port = gateway_config.mqtt.port;
        let provider = SimulatedProvider::new(config.provider_faults.clone())
            .context("invalid payment provider faults")?;
        let payments_provider = provider.clone();
        let mandate_check = config.mandate_check;
        let gateway = Gateway::build(gateway_config, move |db| {
            Arc::new(Payments::new(db, payments_provider).with_mandate_check(mandate_check))
        })
        .await
        .context("failed to build the gateway")?;

        let broker = match config.mqtt {
            MqttSetup::Embedded { listen } => {
                if !listen.ip().is_loopback() {
                    tracing::warn!(
                        %listen,
                        "the embedded broker's plain listener is beyond loopback: device passwords and plate reads cross the network in clear; serve devices over TLS (--mqtt-tls-cert, --mqtt-tls-key)"
                    );
                }
                let logins = Arc::new(Logins {
                    platform: PlatformLogin {
                        username: PLATFORM_USER.to_owned(),
                        password: platform_password.into(),
                    },
                    registry: gateway.registry(),
                    db: gateway.db(),
                });
                let mut broker_config = BrokerConfig::new(listen, logins);
                broker_config.tls = config.mqtt_tls.clone();
                broker_config.segment_bytes =
                    (config.mqtt_log_bytes / broker_config.segment_count).max(1024);
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
            provider,
            charging: config.charging,
            arrears: config.arrears,
            settle_every: config.settle_every,
            retention: config.retention,
            plate_key: config.decisions.plate_key.clone(),
        })
    }

    /// Where `/metrics` is served without a key (`--metrics-listen`), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.gateway.metrics_addr()
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

    /// The payment provider the platform debits (simulated).
    pub fn provider(&self) -> SimulatedProvider {
        self.provider.clone()
    }

    /// Writes `plan` to the database and reloads the registry and the gate actor's facts.
    pub async fn provision(&self, plan: &Plan) -> anyhow::Result<()> {
        let db = self.db();
        provision(&db, plan, Utc::now())
            .await
            .context("failed to provision")?;
        self.registry()
            .reload(&db)
            .await
            .context("failed to reload the registry")?;
        self.gateway.gates().reload(&db).await;
        self.gateway.occupancy().reload_passes(&db).await;
        self.gateway
            .sync_broker()
            .await
            .context("failed to give the broker the devices' permissions")?;
        Ok(())
    }

    /// Runs until `token` is cancelled (or a core task fails), then drains the gateway, stops
    /// billing and the broker.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let db = self.gateway.db();
        let gates = self.gateway.gates();
        let tracker = TaskTracker::new();
        let charging =
            ChargingWorker::new(db.clone(), self.provider.clone(), self.charging.clone())
                .await
                .context("failed to start charging")?
                .on_plate_debts({
                    let gates = gates.clone();
                    std::sync::Arc::new(move || gates.facts_changed())
                });
        tracker.spawn(charging.run(token.clone()));
        // The provider's callbacks (late confirmations, sometimes twice) bring a charge forward.
        if let Some(mut callbacks) = self.provider.callbacks() {
            let db = db.clone();
            let token = token.clone();
            tracker.spawn(async move {
                loop {
                    let callback = tokio::select! {
                        () = token.cancelled() => break,
                        callback = callbacks.recv() => match callback { Some(c) => c, None => break },
                    };
                    if let Err(error) = parkflow_billing::charging::nudge(&db, &callback.idempotency_key, Utc::now()).await {
                        tracing::warn!(error = %error, "failed to act on a payment callback");
                    }
                }
            });
        }
        // Settlement of the last days, every few minutes: a re-run replaces the figures with the same.
        {
            let db = db.clone();
            let token = token.clone();
            let every = self.settle_every;
            tracker.spawn(async move {
                loop {
                    let today = Utc::now().date_naive();
                    let (from, to) = (
                        today - chrono::Duration::days(3),
                        today + chrono::Duration::days(1),
                    );
                    if let Err(error) =
                        parkflow_billing::settlement::settle(&db, from, to, Utc::now()).await
                    {
                        tracing::warn!(error = %error, "settlement run failed");
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                }
            });
        }
        tracker.spawn(run_retention(
            db.clone(),
            self.plate_key.clone(),
            self.retention.clone(),
            token.clone(),
        ));
        let (standing_tx, mut standing_rx) = mpsc::channel(STANDING_CHANNEL_CAPACITY);
        tracker.spawn(ArrearsWorker::new(db, self.arrears.clone(), standing_tx).run(token.clone()));
        // Suspensions and reinstatements reach the gate actor, which holds or frees exits.
        tracker.spawn(async move {
            while let Some(change) = standing_rx.recv().await {
                gates.send(GateMessage::standing(&change)).await;
            }
        });
        let result = self.gateway.run(token.clone()).await;
        token.cancel();
        tracker.close();
        tracker.wait().await;
        if let Some(broker) = self.broker {
            broker.stop();
        }
        result.context("gateway failed")
    }
}
