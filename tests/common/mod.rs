//! What the whole-platform tests share: a platform on free ports with a fresh database, devices
//! that speak the protocol, and `eventually`.
//!
//! PostgreSQL and Mosquitto tests run when `PARKFLOW_TEST_POSTGRES_URL` (an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/test`; each test gets a database of its own) and
//! `PARKFLOW_TEST_MQTT_URL` (`mqtt://127.0.0.1:1883`) are set; `.ci/run` sets both.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parkflow::demo::demo_tariff;
use parkflow::{MqttSetup, Platform, PlatformConfig};
use parkflow_gateway::registry::{DeviceKind, GateDirection, LotKind};
use parkflow_gateway::store::provision::{
    BlockPlan, DevicePlan, DriverPlan, LotPlan, OperatorPlan, PassPlan, Plan,
};
use parkflow_protocol::sign::{open, plain, seal};
use parkflow_protocol::{
    DeviceAuth, DeviceId, Direction, EventId, GateCommand, GateId, GatePlateRead, LotId, Plate,
    PlateColor, Topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Whole-platform tests of `scenario` (an `async fn(Setup)`) on each database with the embedded
/// broker: `scenario::on_sqlite`, and `scenario::on_postgres` (skipped, outside CI, when
/// PostgreSQL is not configured).
#[macro_export]
macro_rules! on_each_database {
    ($scenario:ident) => {
        mod $scenario {
            use $crate::common::{Broker, Database, Setup};

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

/// The test city: one gated lot with an entry and an exit lane, a few drivers.
#[derive(Clone)]
pub struct World {
    pub lot: LotId,
    pub entry: GateId,
    pub exit: GateId,
    pub entry_camera: DeviceId,
    pub exit_camera: DeviceId,
    pub secrets: Vec<(DeviceId, String, String)>,
    pub enrolled: Plate,
    pub unenrolled: Plate,
    pub suspended: Plate,
    pub blocked: Plate,
    pub pass_holder: Plate,
    pub plan: Plan,
}

impl World {
    /// Lot ids are unique per test so tests sharing one external broker never meet.
    pub fn new(setup: Setup, capacity: u32) -> Self {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let lot = LotId::parse(&format!("lot-{suffix}")).unwrap();
        let entry = GateId::parse("in-1").unwrap();
        let exit = GateId::parse("out-1").unwrap();
        let entry_camera = DeviceId::parse(&format!("cam-in-{suffix}")).unwrap();
        let exit_camera = DeviceId::parse(&format!("cam-out-{suffix}")).unwrap();
        let plate = |p: &str| Plate::parse(p).unwrap();
        let (enrolled, unenrolled, suspended, blocked, pass_holder) = (
            plate("浙A0B818"),
            plate("浙B12345"),
            plate("浙C55555"),
            plate("浙D66666"),
            plate("浙E77777"),
        );
        let secrets: Vec<(DeviceId, String, String)> = [&entry_camera, &exit_camera]
            .into_iter()
            .map(|id| {
                (
                    id.clone(),
                    format!("pw-{}", Uuid::new_v4()),
                    format!("secret-{}", Uuid::new_v4()),
                )
            })
            .collect();
        let devices = secrets
            .iter()
            .zip([&entry, &exit])
            .map(|((id, password, secret), gate)| DevicePlan {
                id: id.clone(),
                kind: DeviceKind::GateCamera,
                lot: Some(lot.clone()),
                gate: Some(gate.clone()),
                bay: None,
                mqtt_username: id.to_string(),
                mqtt_password: password.clone(),
                secret: secret.clone(),
            })
            .collect();
        let driver = |plates: Vec<Plate>, suspended| DriverPlan {
            id: Uuid::new_v4(),
            name: "Test driver".into(),
            suspended,
            payment_account: Some("acct-test".into()),
            plates: plates
                .into_iter()
                .map(|p| (p, Some(PlateColor::Blue)))
                .collect(),
        };
        let plan = Plan {
            operators: vec![OperatorPlan {
                id: "op-test".into(),
                name: "Test operator".into(),
            }],
            lots: vec![LotPlan {
                id: lot.clone(),
                operator_id: "op-test".into(),
                name: "Test lot".into(),
                kind: LotKind::OffStreet,
                lat: 30.25,
                lon: 120.15,
                capacity,
                time_zone: "Asia/Shanghai".into(),
                device_auth: setup.device_auth(),
                gates: vec![
                    (entry.clone(), GateDirection::Entry),
                    (exit.clone(), GateDirection::Exit),
                ],
                bays: Vec::new(),
                max_stay_minutes: None,
                // Grace 0, 15-minute units, first unit 5.00 by day; night 1.00 capped at 5.00.
                tariffs: vec![demo_tariff(0)],
            }],
            devices,
            drivers: vec![
                driver(vec![enrolled.clone()], false),
                driver(vec![suspended.clone()], true),
            ],
            passes: vec![PassPlan {
                lot: lot.clone(),
                plate: pass_holder.clone(),
                valid_from: Utc::now() - chrono::Duration::days(1),
                valid_until: Utc::now() + chrono::Duration::days(30),
            }],
            blocks: vec![BlockPlan {
                lot: lot.clone(),
                plate: blocked.clone(),
                reason: "test".into(),
            }],
        };
        Self {
            lot,
            entry,
            exit,
            entry_camera,
            exit_camera,
            secrets,
            enrolled,
            unenrolled,
            suspended,
            blocked,
            pass_holder,
            plan,
        }
    }

    pub fn device(&self, id: &DeviceId) -> (String, String) {
        let (_, password, secret) = self.secrets.iter().find(|(d, _, _)| d == id).unwrap();
        (password.clone(), secret.clone())
    }
}

/// A test's changes to the platform's configuration, applied at every (re)start.
pub type Configure = std::sync::Arc<dyn Fn(&mut PlatformConfig) + Send + Sync>;

/// A running platform and how to reach it.
pub struct TestPlatform {
    configure: Configure,
    pub setup: Setup,
    pub http: SocketAddr,
    pub mqtt: (String, u16),
    pub database_url: String,
    pub client_id: String,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
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
        let running = boot(setup, &database_url, &client_id, free_addr(), &configure).await;
        let platform = Self {
            configure,
            setup,
            http: running.http,
            mqtt: running.mqtt,
            database_url,
            client_id,
            token: running.token,
            task: Some(running.task),
            _dir: dir,
            pg_database,
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
        if self.setup.broker == Broker::Mosquitto {
            forget_persistent_session(&self.mqtt, &self.client_id).await;
            forget_persistent_session(&self.mqtt, &format!("{}-bays", self.client_id)).await;
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
        let text = reqwest::get(self.url("/metrics"))
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
    mqtt: (String, u16),
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
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
    let http = platform.http_addr();
    let mqtt = platform.mqtt_addr();
    let token = CancellationToken::new();
    let task = tokio::spawn(platform.run(token.clone()));
    Running {
        http,
        mqtt,
        token,
        task,
    }
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
        Broker::Mosquitto => {
            let url = url::Url::parse(&std::env::var("PARKFLOW_TEST_MQTT_URL").unwrap()).unwrap();
            MqttSetup::External {
                host: url.host_str().unwrap().to_owned(),
                port: url.port().unwrap_or(1883),
                credentials: None,
            }
        }
    };
    let mut config = PlatformConfig::new("127.0.0.1:0".parse().unwrap(), database_url, mqtt);
    config.mqtt_client_id = client_id.to_owned();
    config.admin_key = Some(ADMIN_KEY.to_owned());
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

/// A database of its own for one test: a temp SQLite file, or a fresh PostgreSQL database.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_database: Option<String>,
}

impl TestDatabase {
    pub async fn new(database: Database) -> Self {
        match database {
            Database::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}", dir.path().join("parkflow.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg_database: None,
                }
            }
            Database::Postgres => {
                let (url, name) = fresh_postgres_database().await;
                Self {
                    url,
                    _dir: None,
                    pg_database: Some(name),
                }
            }
        }
    }

    pub async fn drop_database(mut self) {
        if let Some(name) = self.pg_database.take() {
            drop_postgres_database(&name).await;
        }
    }
}

async fn fresh_postgres_database() -> (String, String) {
    use sqlx::Connection;
    let admin = std::env::var("PARKFLOW_TEST_POSTGRES_URL").unwrap();
    let name = format!("parkflow_test_{}", Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    (url.to_string(), name)
}

async fn drop_postgres_database(name: &str) {
    use sqlx::Connection;
    let admin = std::env::var("PARKFLOW_TEST_POSTGRES_URL").unwrap();
    if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut connection)
            .await;
        let _ = connection.close().await;
    }
}

/// Ends the persistent session a test's platform left on the shared broker.
async fn forget_persistent_session(mqtt: &(String, u16), client_id: &str) {
    let mut options = MqttOptions::new(client_id, &mqtt.0, mqtt.1);
    options.set_clean_session(true);
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

/// A device on the broker: a gate camera, or anything pretending to be one.
pub struct TestDevice {
    pub id: DeviceId,
    pub lot: LotId,
    pub gate: GateId,
    secret: String,
    auth: DeviceAuth,
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    seen: Vec<GateCommand>,
    connection: JoinHandle<()>,
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        // Another device may connect under the same client id next; this one must be gone.
        self.connection.abort();
    }
}

impl TestDevice {
    /// Connects as `id` (client id = device id) and subscribes to its gate's command topic.
    pub async fn connect(
        platform: &TestPlatform,
        world: &World,
        id: &DeviceId,
        gate: &GateId,
    ) -> Self {
        let (password, secret) = world.device(id);
        let mut options = MqttOptions::new(id.as_str(), &platform.mqtt.0, platform.mqtt.1);
        if platform.setup.broker == Broker::Embedded {
            options.set_credentials(id.as_str(), &password);
        }
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let topic = Topic::GateCommand {
            lot: world.lot.clone(),
            gate: gate.clone(),
        }
        .to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::channel(1);
        let subscribe_client = client.clone();
        let connection = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        subscribe_client
                            .try_subscribe(topic.as_str(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
            .await
            .expect("device subscribed");
        Self {
            id: id.clone(),
            lot: world.lot.clone(),
            gate: gate.clone(),
            secret,
            auth: platform.setup.device_auth(),
            client,
            commands: rx,
            seen: Vec::new(),
            connection,
        }
    }

    pub fn read(&self, plate: &str, direction: Direction) -> GatePlateRead {
        GatePlateRead {
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            plate: plate.to_owned(),
            plate_color: Some(PlateColor::Blue),
            confidence: 0.97,
            direction,
            observed_at: Utc::now(),
        }
    }

    pub fn read_at(
        &self,
        plate: &str,
        direction: Direction,
        observed_at: DateTime<Utc>,
    ) -> GatePlateRead {
        GatePlateRead {
            observed_at,
            ..self.read(plate, direction)
        }
    }

    pub fn plate_topic(&self) -> Topic {
        Topic::GatePlate {
            lot: self.lot.clone(),
            gate: self.gate.clone(),
        }
    }

    /// The read as this device publishes it: signed, or plain JSON in `broker` mode.
    pub fn encode(&self, read: &GatePlateRead) -> Vec<u8> {
        match self.auth {
            DeviceAuth::Signed => seal(&self.plate_topic(), read, &self.id, self.secret.as_bytes()),
            DeviceAuth::Broker => plain(&self.plate_topic(), read),
        }
    }

    pub fn sign(&self, read: &GatePlateRead) -> Vec<u8> {
        seal(&self.plate_topic(), read, &self.id, self.secret.as_bytes())
    }

    pub async fn publish(&self, read: &GatePlateRead) {
        self.publish_raw(&self.plate_topic().to_string(), self.encode(read))
            .await;
    }

    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Waits for the command answering `event_id` (verifying its signature) and returns it.
    pub async fn command_for(&mut self, event_id: &EventId) -> GateCommand {
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            loop {
                if let Some(found) = self.seen.iter().find(|c| &c.event_id == event_id) {
                    return found.clone();
                }
                let (topic, payload) = self.commands.recv().await.expect("device connection alive");
                let own = self.id.clone();
                let secret = self.secret.clone();
                let command = open::<GateCommand, _>(&payload, &topic, DeviceAuth::Signed, |kid| {
                    (kid == &own).then_some(secret)
                })
                .expect("commands are signed with this camera's secret")
                .body;
                self.seen.push(command);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no command answered event {event_id} within {deadline:?}"))
    }

    /// Publishes `read` and waits for its command.
    pub async fn decide(&mut self, read: &GatePlateRead) -> GateCommand {
        self.publish(read).await;
        self.command_for(&read.event_id).await
    }

    /// Commands received so far for `event_id` (after taking in what has arrived).
    pub fn commands_for(&mut self, event_id: &EventId) -> Vec<GateCommand> {
        while let Ok((topic, payload)) = self.commands.try_recv() {
            let opened = open::<GateCommand, _>(&payload, &topic, DeviceAuth::Signed, |_| {
                Some(self.secret.clone())
            })
            .expect("commands are signed with this camera's secret");
            self.seen.push(opened.body);
        }
        self.seen
            .iter()
            .filter(|c| &c.event_id == event_id)
            .cloned()
            .collect()
    }

    pub fn commands_seen_for(&mut self, event_id: &EventId) -> usize {
        self.commands_for(event_id).len()
    }
}
