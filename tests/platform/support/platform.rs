//! A whole platform on free ports with a database of its own, restartable.

use std::net::SocketAddr;
use std::time::Duration;

use super::database::{drop_postgres_database, fresh_postgres_database};
use super::*;
use chrono::Utc;
use parkflow::{MqttSetup, Platform, PlatformConfig};
use parkflow_gateway::BrokerAcl;
use parkflow_protocol::LotId;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A test's changes to the platform's configuration, applied at every (re)start.
pub type Configure = std::sync::Arc<dyn Fn(&mut PlatformConfig) + Send + Sync>;

/// A running platform and how to reach it.
pub struct TestPlatform {
    configure: Configure,
    pub setup: Setup,
    pub http: SocketAddr,
    /// The simulated payment provider the platform debits (a test plays the banks through it).
    pub provider: parkflow_billing::provider::SimulatedProvider,
    pub mqtt: (String, u16),
    pub database_url: String,
    pub client_id: String,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
    /// What the platform and the world's devices leave retained on a broker they share with
    /// other tests (standing lists, availability, device statuses): cleared at `stop`.
    retained: Vec<String>,
}

impl TestPlatform {
    /// An HTTP request as an app sends it: `key` as the bearer, a fresh `Idempotency-Key`, the
    /// body as JSON; the status and the JSON answer (`null` when it is not JSON, and for the
    /// never-ending availability stream, whose status is the answer).
    pub async fn call(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method, self.url(path))
            .header("Idempotency-Key", Uuid::new_v4().to_string());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if response
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "text/event-stream")
        {
            return (status, serde_json::Value::Null);
        }
        (status, response.json().await.unwrap_or_default())
    }

    /// [`TestPlatform::call`] with `key`, the body given by value.
    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(Some(key), method, path, body.as_ref()).await
    }

    /// A new API key of `role` (for `operator`), issued by the platform admin.
    pub async fn issue_key(&self, role: &str, operator: Option<&str>) -> String {
        let body = serde_json::json!({ "role": role, "operator_id": operator });
        let (status, issued) = self
            .call(
                Some(ADMIN_KEY),
                reqwest::Method::POST,
                "/v1/keys",
                Some(&body),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{issued}");
        issued["key"].as_str().unwrap().to_owned()
    }

    /// Starts a platform with a fresh database provisioned with `world`.
    pub async fn start(setup: Setup, world: &World) -> Self {
        Self::start_with(setup, world, |_| {}).await
    }

    /// [`TestPlatform::start`], with `configure` changing the configuration first.
    pub async fn start_with(
        setup: Setup,
        world: &World,
        configure: impl Fn(&mut PlatformConfig) + Send + Sync + 'static,
    ) -> Self {
        let configure: Configure = std::sync::Arc::new(configure);
        let (database_url, dir, pg_database) = match setup.database {
            Database::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (
                    format!("sqlite:{}", dir.path().join("parkflow.db").display()),
                    Some(dir),
                    None,
                )
            }
            Database::Postgres => {
                let (url, name) = fresh_postgres_database().await;
                (url, None, Some(name))
            }
        };
        let db = parkflow_gateway::store::Db::connect(&database_url)
            .await
            .unwrap();
        parkflow_gateway::store::provision::provision(&db, &world.plan, Utc::now())
            .await
            .unwrap();
        db.close().await;
        let client_id = format!("parkflow-test-{}", Uuid::new_v4().simple());
        let mut retained: Vec<String> = world
            .plan
            .devices
            .iter()
            .map(|d| {
                parkflow_protocol::Topic::DeviceStatus {
                    device: d.id.clone(),
                }
                .to_string()
            })
            .collect();
        for lot in &world.plan.lots {
            retained.push(
                parkflow_protocol::Topic::LotAvailability {
                    lot: lot.id.clone(),
                }
                .to_string(),
            );
            for (gate, _) in &lot.gates {
                retained.push(
                    parkflow_protocol::Topic::GateStanding {
                        lot: lot.id.clone(),
                        gate: gate.clone(),
                    }
                    .to_string(),
                );
            }
        }
        let running = boot_anywhere(setup, &database_url, &client_id, &configure).await;
        let platform = Self {
            configure,
            setup,
            http: running.http,
            provider: running.provider,
            mqtt: running.mqtt,
            database_url,
            client_id,
            token: running.token,
            task: Some(running.task),
            _dir: dir,
            pg_database,
            retained,
        };
        platform.wait_ready().await;
        platform
    }

    fn mqtt_listen(&self) -> SocketAddr {
        format!("{}:{}", self.mqtt.0, self.mqtt.1).parse().unwrap()
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.http);
        eventually(Duration::from_secs(20), "the platform to be ready", || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(drop)
            }
        })
        .await;
    }

    /// Stops the platform (gateway and embedded broker) and starts it again on the same database
    /// and the same broker address.
    pub async fn restart(&mut self) {
        self.pause().await;
        self.resume().await;
    }

    /// Changes the configuration the next [`TestPlatform::resume`] starts with.
    pub fn reconfigure(&mut self, configure: impl Fn(&mut PlatformConfig) + Send + Sync + 'static) {
        self.configure = std::sync::Arc::new(configure);
    }

    /// Stops the platform; [`TestPlatform::resume`] starts it again on the same database.
    pub async fn pause(&mut self) {
        self.stop_platform().await;
    }

    pub async fn resume(&mut self) {
        let mqtt_listen = self.mqtt_listen();
        let database_url = self.database_url.clone();
        let client_id = self.client_id.clone();
        let running = boot(
            self.setup,
            &database_url,
            &client_id,
            mqtt_listen,
            &self.configure,
        )
        .await;
        self.http = running.http;
        self.provider = running.provider;
        self.token = running.token;
        self.task = Some(running.task);
        self.wait_ready().await;
    }

    async fn stop_platform(&mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn stop(mut self) {
        self.stop_platform().await;
        if let Some(url) = self.setup.broker.url() {
            forget_persistent_session(&url, &self.client_id).await;
            forget_persistent_session(&url, &format!("{}-bays", self.client_id)).await;
            clear_retained(&url, &self.retained).await;
        }
        if let Some(name) = self.pg_database.take() {
            drop_postgres_database(&name).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// GET with the admin key, as JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// The value of a metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub async fn sessions(&self, lot: &LotId) -> Vec<serde_json::Value> {
        let value = self.admin_get(&format!("/v1/sessions?lot={lot}")).await;
        value.as_array().unwrap().clone()
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A platform task and its addresses.
struct Running {
    http: SocketAddr,
    provider: parkflow_billing::provider::SimulatedProvider,
    mqtt: (String, u16),
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Boots on a free broker port. rumqttd cannot bind port 0, so the port is found free first and
/// another test may take it in between: then another free port is tried.
async fn boot_anywhere(
    setup: Setup,
    database_url: &str,
    client_id: &str,
    configure: &Configure,
) -> Running {
    for _ in 0..4 {
        let config = config(setup, database_url, client_id, free_addr(), configure);
        match Platform::build(config).await {
            Ok(platform) => return running(platform),
            Err(error)
                if matches!(
                    error.downcast_ref::<parkflow_broker::BrokerError>(),
                    Some(parkflow_broker::BrokerError::PortTaken(_))
                ) => {}
            Err(error) => panic!("platform builds: {error:?}"),
        }
    }
    panic!("no free broker port in four tries");
}

fn running(platform: Platform) -> Running {
    let http = platform.http_addr();
    let mqtt = platform.mqtt_addr();
    let provider = platform.provider();
    let token = CancellationToken::new();
    let task = tokio::spawn(platform.run(token.clone()));
    Running {
        http,
        provider,
        mqtt,
        token,
        task,
    }
}

async fn boot(
    setup: Setup,
    database_url: &str,
    client_id: &str,
    mqtt_listen: SocketAddr,
    configure: &Configure,
) -> Running {
    let platform = Platform::build(config(
        setup,
        database_url,
        client_id,
        mqtt_listen,
        configure,
    ))
    .await
    .expect("platform builds");
    running(platform)
}

fn config(
    setup: Setup,
    database_url: &str,
    client_id: &str,
    mqtt_listen: SocketAddr,
    configure: &Configure,
) -> PlatformConfig {
    let mqtt = match setup.broker {
        Broker::Embedded => MqttSetup::Embedded {
            listen: mqtt_listen,
        },
        Broker::Mosquitto | Broker::MosquittoDynsec => {
            let url = setup.broker.url().expect("the broker's URL is set");
            MqttSetup::External {
                host: url.host_str().unwrap().to_owned(),
                port: url.port().unwrap_or(1883),
                credentials: admin_login(&url),
                tls: None,
            }
        }
    };
    let mut config = PlatformConfig::new("127.0.0.1:0".parse().unwrap(), database_url, mqtt);
    config.mqtt_client_id = client_id.to_owned();
    if setup.broker == Broker::MosquittoDynsec {
        config.broker_acl = Some(BrokerAcl::MosquittoDynsec);
    }
    config.admin_key = Some(ADMIN_KEY.into());
    config.vehicle_register_secret = super::VEHICLE_REGISTER_SECRET.into();
    // Every platform test runs with device secrets sealed at rest.
    config.secrets_key = Some(super::SECRETS_KEY.into());
    // The tests' fake cameras listen on this machine.
    config.barrier_calls_to_loopback = true;
    // Tests open many availability streams from one address (the cap has a router test).
    config.max_streams_per_address = 1_000;
    // Billing at test speed: a payment window of two seconds, workers that look often.
    config.charging.payment_window = Duration::from_secs(2);
    config.charging.idle_poll = Duration::from_millis(50);
    config.charging.retry_after = Duration::from_millis(100);
    config.arrears.poll = Duration::from_millis(100);
    // Tests poll public endpoints often; the rate-limit test sets its own limit.
    config.public_rate_per_second = 10_000;
    config.driver_rate_per_second = 10_000;
    config.occupancy.sweep_interval = Duration::from_millis(250);
    configure(&mut config);
    config
}
/// The user name and password of a broker URL, if it has them.
pub fn admin_login(url: &url::Url) -> Option<(String, SecretString)> {
    (!url.username().is_empty()).then(|| {
        (
            url.username().to_owned(),
            url.password().unwrap_or_default().into(),
        )
    })
}

/// Ends the persistent session a test's platform left on the shared broker.
/// Publishes an empty retained message on each of `topics`, which removes what is retained there.
async fn clear_retained(url: &url::Url, topics: &[String]) {
    let mut options = MqttOptions::new(
        format!("parkflow-test-clear-{}", Uuid::new_v4().simple()),
        url.host_str().unwrap(),
        url.port().unwrap_or(1883),
    );
    if let Some((user, password)) = admin_login(url) {
        options.set_credentials(user, password.expose_secret());
    }
    let (client, mut events) = AsyncClient::new(options, topics.len() + 10);
    for topic in topics {
        let _ = client.try_publish(topic.as_str(), rumqttc::QoS::AtLeastOnce, true, Vec::new());
    }
    let mut acked = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == topics.len() {
                        let _ = client.disconnect().await;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
}

async fn forget_persistent_session(url: &url::Url, client_id: &str) {
    let mut options = MqttOptions::new(
        client_id,
        url.host_str().unwrap(),
        url.port().unwrap_or(1883),
    );
    options.set_clean_session(true);
    if let Some((user, password)) = admin_login(url) {
        options.set_credentials(user, password.expose_secret());
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
}
