//! `parkflow bench burst` and `parkflow bench memory`: a city's bays (848,000 by default) in
//! zones of 400 with a sensor each and a bridge per zone, provisioned into a fresh SQLite
//! database and served by `parkflow run` in a child process — so its resident memory is the
//! gateway's own (with its embedded broker), not the load generator's.
//!
//! `memory` reads the child's RSS once the registry is loaded, beside 16 bytes a bay.
//! `burst` then replays every bay's state through bridge batches (1,000 events each), and again
//! as one signed message per bay, timing each until every state is applied and durable (the
//! gateway's `parkflow_bay_states_written_total`), beside a raw bulk insert of as many rows.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use parkflow_gateway::registry::{DeviceKind, LotKind};
use parkflow_gateway::store::Db;
use parkflow_gateway::store::provision::{DevicePlan, LotPlan, OperatorPlan, Plan, provision};
use parkflow_protocol::sign::seal;
use parkflow_protocol::{
    BayId, BridgeBatch, BridgeEvent, DeviceAuth, DeviceId, EventId, LotId, OccupancyEvent, Topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use uuid::Uuid;

use super::ratio;
use crate::demo::demo_tariff;
use crate::platform::{mqtt_password, random_device_key};

/// Bays per zone, as in the Hangzhou preset.
const BAYS_PER_ZONE: u32 = 400;
/// Zones provisioned per transaction.
const ZONES_PER_PLAN: usize = 50;
/// MQTT connections the load comes through.
const CONNECTIONS: usize = 4;
/// Bay states published but not yet durable that the load generator allows at most. rumqttd
/// keeps a subscription's messages in an in-memory log and silently skips a subscriber that
/// falls further behind (FINDINGS), so an unpaced publisher of a whole city (230 MB of signed
/// batches in a second) loses messages; real bridges spread a city's reports over time. On the
/// embedded broker the window is also held to half its log ([`window_events`]).
const WINDOW_EVENTS: f64 = 150_000.0;

/// The messages' mean size as rumqttd counts it in its log: 4 bytes, the topic and the payload.
fn mean_bytes(messages: &[(String, Vec<u8>)]) -> f64 {
    let bytes: usize = messages.iter().map(|(t, p)| 4 + t.len() + p.len()).sum();
    bytes as f64 / messages.len().max(1) as f64
}

/// The states that may be on their way at once when each message carries `events_per_message`
/// and the messages average `message_bytes` as rumqttd counts them: [`WINDOW_EVENTS`], and on
/// the embedded broker (`log_mib`) at most half its log (the log drops its oldest eighth when
/// full, so half leaves a margin).
fn window_events(log_mib: Option<u32>, message_bytes: f64, events_per_message: f64) -> f64 {
    let Some(log_mib) = log_mib else {
        return WINDOW_EVENTS;
    };
    let half_log = f64::from(log_mib) * 1024.0 * 1024.0 / 2.0;
    (half_log / message_bytes * events_per_message).min(WINDOW_EVENTS)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The city the bench provisions: zone ids and every key the load generator signs with.
struct BenchCity {
    zones: Vec<LotId>,
    bridge_keys: Vec<(DeviceId, String, String)>,
    /// Sensor keys, zone by zone, bay by bay.
    sensor_keys: Vec<String>,
}

fn zone_id(z: usize) -> anyhow::Result<LotId> {
    Ok(LotId::parse(&format!("bz-{z:05}"))?)
}

fn bay_id(b: u32) -> anyhow::Result<BayId> {
    Ok(BayId::parse(&format!("b-{b:04}"))?)
}

fn sensor_id(zone: &LotId, b: u32) -> anyhow::Result<DeviceId> {
    Ok(DeviceId::parse(&format!("s-{zone}-{b:04}"))?)
}

async fn provision_city(db: &Db, bays: usize) -> anyhow::Result<BenchCity> {
    let zones = bays.div_ceil(BAYS_PER_ZONE as usize);
    let mut city = BenchCity {
        zones: Vec::with_capacity(zones),
        bridge_keys: Vec::with_capacity(zones),
        sensor_keys: Vec::with_capacity(bays),
    };
    let mut left = bays;
    for first in (0..zones).step_by(ZONES_PER_PLAN) {
        let mut plan = Plan {
            operators: vec![OperatorPlan {
                id: "bench".into(),
                name: "Bench operator".into(),
            }],
            ..Plan::default()
        };
        for z in first..(first + ZONES_PER_PLAN).min(zones) {
            let zone = zone_id(z)?;
            let n = left.min(BAYS_PER_ZONE as usize) as u32;
            left -= n as usize;
            plan.lots.push(LotPlan {
                id: zone.clone(),
                operator_id: "bench".into(),
                name: format!("Bench zone {z}"),
                kind: LotKind::OnStreet,
                lat: 30.1 + (z % 100) as f64 * 0.003,
                lon: 120.0 + (z / 100) as f64 * 0.003,
                capacity: n,
                time_zone: "Asia/Shanghai".into(),
                device_auth: DeviceAuth::Signed,
                gates: Vec::new(),
                bays: (0..n).map(bay_id).collect::<anyhow::Result<_>>()?,
                max_stay_minutes: None,
                offline_policy: Default::default(),
                tariffs: vec![demo_tariff(z)],
            });
            for b in 0..n {
                let secret = random_device_key();
                let id = sensor_id(&zone, b)?;
                plan.devices.push(DevicePlan {
                    mqtt_username: id.to_string(),
                    id,
                    kind: DeviceKind::BaySensor,
                    lot: Some(zone.clone()),
                    gate: None,
                    bay: Some(bay_id(b)?),
                    secret: secret.clone().into(),
                });
                city.sensor_keys.push(secret);
            }
            let bridge = DeviceId::parse(&format!("nb-{zone}"))?;
            let secret = random_device_key();
            let password = mqtt_password(&secret);
            plan.devices.push(DevicePlan {
                id: bridge.clone(),
                kind: DeviceKind::Bridge,
                lot: Some(zone.clone()),
                gate: None,
                bay: None,
                mqtt_username: bridge.to_string(),
                secret: secret.clone().into(),
            });
            city.bridge_keys.push((bridge, password, secret));
            city.zones.push(zone);
        }
        provision(db, &plan, Utc::now()).await?;
    }
    Ok(city)
}

/// `parkflow run` in a child process on the bench's database.
struct Gateway {
    child: Child,
    http: u16,
    mqtt: u16,
    /// `/metrics` without a key (`--metrics-listen`), as Prometheus scrapes it.
    metrics: u16,
    /// On its embedded broker, the platform's own login: the bench publishes every bay's
    /// messages over a few connections, which the broker allows the platform alone.
    platform_login: Option<(String, String)>,
    /// On its embedded broker, the log per subscription it was given (MiB).
    log_mib: Option<u32>,
}

impl Gateway {
    /// On its embedded broker, or with `broker` on that one.
    fn spawn(database_url: &str, broker: Option<std::net::SocketAddr>) -> anyhow::Result<Self> {
        let (http, metrics) = (free_port()?, free_port()?);
        let log_mib = broker.is_none().then_some(parkflow_broker::DEFAULT_LOG_MIB);
        let (mqtt, mqtt_args) = match broker {
            None => {
                let port = free_port()?;
                (
                    port,
                    vec![
                        "--mqtt-listen".to_owned(),
                        format!("127.0.0.1:{port}"),
                        // Given, not inherited from the environment: the pacing counts on it.
                        "--mqtt-log-mib".to_owned(),
                        parkflow_broker::DEFAULT_LOG_MIB.to_string(),
                    ],
                )
            }
            Some(addr) => (
                addr.port(),
                vec!["--mqtt-url".to_owned(), format!("mqtt://{addr}")],
            ),
        };
        let platform_login = broker.is_none().then(|| {
            (
                crate::platform::PLATFORM_USER.to_owned(),
                crate::platform::random_secret(),
            )
        });
        let mut command = Command::new(std::env::current_exe()?);
        if let Some((_, password)) = &platform_login {
            command.env("PARKFLOW_MQTT_PLATFORM_PASSWORD", password);
        }
        let child = command
            .args([
                "run",
                "--database-url",
                database_url,
                "--http-listen",
                &format!("127.0.0.1:{http}"),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
                "--public-rate",
                "1000000",
            ])
            .args(&mqtt_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start the gateway process")?;
        Ok(Self {
            child,
            http,
            mqtt,
            metrics,
            platform_login,
            log_mib,
        })
    }

    /// A bench client's id and login: the platform's under `client_id` on the embedded broker,
    /// else the device's own (its id is its client id).
    fn login(&self, client_id: &str, device: &str, password: &str) -> (String, (String, String)) {
        match &self.platform_login {
            Some(login) => (client_id.to_owned(), login.clone()),
            None => (device.to_owned(), (device.to_owned(), password.to_owned())),
        }
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.http);
        for _ in 0..6_000 {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the gateway process exited: {status}");
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the gateway was not ready within 10 minutes")
    }

    /// The resident set size of the gateway process, in bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    async fn metric(&self, client: &reqwest::Client, series: &str) -> anyhow::Result<f64> {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(super::metric_value(&text, series))
    }
}

impl Gateway {
    /// The sum of every series starting with `prefix` (a family's labelled series).
    async fn metric_sum(&self, client: &reqwest::Client, prefix: &str) -> anyhow::Result<f64> {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects `CONNECTIONS` publishers: on the embedded broker with the platform's login, on an
/// open outside one as the first bridges.
async fn publishers(city: &BenchCity, gateway: &Gateway) -> anyhow::Result<Vec<AsyncClient>> {
    let mut clients = Vec::new();
    for (i, (bridge, password, _)) in city.bridge_keys.iter().take(CONNECTIONS).enumerate() {
        let (client_id, (user, password)) =
            gateway.login(&format!("bench-publisher-{i}"), bridge.as_str(), password);
        let mut options = MqttOptions::new(client_id, "127.0.0.1", gateway.mqtt);
        options.set_credentials(user, password);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        options.set_inflight(1_000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    // Disconnected on purpose: the connection stays closed.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("publisher did not connect")??;
        clients.push(client);
    }
    Ok(clients)
}

/// Publishes every message (each carrying `events_per_message` bay states) over the connections,
/// keeping at most [`window_events`] states ahead of what the gateway made durable.
async fn publish_paced(
    gateway: &Gateway,
    client: &reqwest::Client,
    clients: &[AsyncClient],
    messages: Vec<(String, Vec<u8>)>,
    events_per_message: f64,
    already_written: f64,
) -> anyhow::Result<()> {
    let message_bytes = mean_bytes(&messages);
    let window = window_events(gateway.log_mib, message_bytes, events_per_message);
    println!("message_bytes={message_bytes:.0} window_events={window:.0}");
    let step = ((window / 4.0) / events_per_message).max(1.0) as usize;
    let mut published = 0.0;
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let chunk: Vec<_> = messages.by_ref().take(step).collect();
        let adding = chunk.len() as f64 * events_per_message;
        // Waits before publishing, so that what is in flight never exceeds the window.
        loop {
            let written = gateway
                .metric(client, "parkflow_bay_states_written_total")
                .await?
                - already_written;
            if published + adding - written <= window {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        published += adding;
        publish_all(clients, chunk).await?;
    }
    Ok(())
}

/// Publishes every message over the connections, in order per connection.
async fn publish_all(
    clients: &[AsyncClient],
    messages: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut lanes: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); clients.len()];
    for (i, message) in messages.into_iter().enumerate() {
        lanes[i % clients.len()].push(message);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (client, lane) in clients.iter().cloned().zip(lanes) {
        tasks.spawn(async move {
            for (topic, payload) in lane {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Waits until the gateway has made `target` bay states durable: the seconds since `start`, or
/// (when nothing moves for ten seconds) how many never arrived.
async fn until_written(
    gateway: &Gateway,
    client: &reqwest::Client,
    target: f64,
    start: Instant,
) -> anyhow::Result<Result<f64, f64>> {
    let (mut last, mut moved) = (-1.0, Instant::now());
    loop {
        let written = gateway
            .metric(client, "parkflow_bay_states_written_total")
            .await?;
        if written >= target {
            return Ok(Ok(start.elapsed().as_secs_f64()));
        }
        if written > last {
            (last, moved) = (written, Instant::now());
        } else if moved.elapsed() > Duration::from_secs(10) {
            return Ok(Err(target - written));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints a phase's figures; the number of states lost, if any.
fn report(name: &str, bays: usize, published: f64, outcome: Result<f64, f64>) -> f64 {
    match outcome {
        Ok(seconds) => {
            println!(
                "{name}_published_s={published:.2} {name}_durable_s={seconds:.2} {name}_rate_per_s={:.0} {name}_lost=0",
                bays as f64 / seconds
            );
            println!("{}", ratio(&format!("{name}_s"), seconds, 10.0, true));
            0.0
        }
        Err(lost) => {
            println!("{name}_published_s={published:.2} {name}_lost={lost}");
            println!("{}", ratio(&format!("{name}_lost"), lost, 0.0, true));
            lost
        }
    }
}

fn event_id() -> anyhow::Result<EventId> {
    Ok(EventId::parse(&Uuid::new_v4().to_string())?)
}

/// Every bay's state as bridge batches of 1,000 (seq 1).
fn bridge_batches(city: &BenchCity, bays: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let now = Utc::now();
    let mut messages = Vec::new();
    let mut left = bays;
    for (zone, (bridge, _, secret)) in city.zones.iter().zip(&city.bridge_keys) {
        let n = left.min(BAYS_PER_ZONE as usize) as u32;
        left -= n as usize;
        let topic = Topic::BridgeOccupancy {
            device: bridge.clone(),
        };
        let events: Vec<BridgeEvent> = (0..n)
            .map(|b| {
                Ok(BridgeEvent {
                    lot: zone.clone(),
                    bay: bay_id(b)?,
                    event_id: event_id()?,
                    occupied: b % 2 == 0,
                    observed_at: now,
                    seq: 1,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // A zone's 400 events fit one batch; bigger zones would be cut at 1,000.
        for chunk in events.chunks(BridgeBatch::MAX_EVENTS) {
            let batch = BridgeBatch {
                events: chunk.to_vec(),
            };
            messages.push((
                topic.to_string(),
                seal(&topic, &batch, bridge, secret.as_bytes()),
            ));
        }
    }
    Ok(messages)
}

/// Every bay's next state as one message from its own sensor (seq 2).
fn single_messages(city: &BenchCity, bays: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let now = Utc::now();
    let mut messages = Vec::with_capacity(bays);
    for (i, secret) in city.sensor_keys.iter().enumerate().take(bays) {
        let zone = &city.zones[i / BAYS_PER_ZONE as usize];
        let b = (i % BAYS_PER_ZONE as usize) as u32;
        let topic = Topic::BayOccupancy {
            lot: zone.clone(),
            bay: bay_id(b)?,
        };
        let body = OccupancyEvent {
            event_id: event_id()?,
            occupied: b % 2 == 1,
            observed_at: now,
            seq: 2,
            battery_pct: Some(70),
        };
        messages.push((
            topic.to_string(),
            seal(&topic, &body, &sensor_id(zone, b)?, secret.as_bytes()),
        ));
    }
    Ok(messages)
}

/// The baseline: the same number of rows bulk-inserted into a bare SQLite table.
async fn raw_bulk_insert(dir: &std::path::Path, rows: usize) -> anyhow::Result<f64> {
    let db = Db::connect(&format!("sqlite:{}", dir.join("raw.db").display())).await?;
    let parkflow_db::Pool::Sqlite(pool) = db.pool() else {
        anyhow::bail!("expected sqlite")
    };
    sqlx::query("CREATE TABLE raw_states (lot_id TEXT, bay_id TEXT, occupied INTEGER, seq INTEGER, observed_at TEXT, PRIMARY KEY (lot_id, bay_id))")
        .execute(pool)
        .await?;
    let start = Instant::now();
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let rows: Vec<usize> = (0..rows).collect();
    for chunk in rows.chunks(500) {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO raw_states (lot_id, bay_id, occupied, seq, observed_at) ",
        );
        query.push_values(chunk, |mut row, i| {
            row.push_bind(format!("bz-{:05}", i / BAYS_PER_ZONE as usize))
                .push_bind(format!("b-{:04}", i % BAYS_PER_ZONE as usize))
                .push_bind(i % 2 == 0)
                .push_bind(1_i64)
                .push_bind(now);
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let seconds = start.elapsed().as_secs_f64();
    db.close().await;
    Ok(seconds)
}

/// The gateway's RSS once its allocator has handed back what it freed: jemalloc's background
/// thread returns freed pages over a decay of 10 s, so this reads the RSS after 12.
async fn settled_rss(gateway: &Gateway) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_secs(12)).await;
    Ok(gateway.rss()? as f64)
}

/// A Mosquitto started for the run, when asked for; else the gateway runs its embedded broker.
async fn mosquitto_if(
    mosquitto: bool,
    dir: &std::path::Path,
) -> anyhow::Result<Option<crate::chaos::parts::Mosquitto>> {
    if !mosquitto {
        return Ok(None);
    }
    let broker = crate::chaos::parts::Mosquitto::start(dir)?;
    broker.listening().await?;
    Ok(Some(broker))
}

/// Runs `memory` (and, with `burst`, the replays), on the embedded broker or a Mosquitto.
pub async fn run(bays: usize, burst: bool, mosquitto: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database_url = format!("sqlite:{}", dir.path().join("city.db").display());
    let started = Instant::now();
    let db = Db::connect(&database_url).await?;
    let city = provision_city(&db, bays).await?;
    db.close().await;
    println!(
        "bays={bays} zones={} provision_s={:.1}",
        city.zones.len(),
        started.elapsed().as_secs_f64()
    );

    let broker = mosquitto_if(mosquitto, dir.path()).await?;
    let client = reqwest::Client::new();
    let loading = Instant::now();
    let mut gateway = Gateway::spawn(&database_url, broker.as_ref().map(|b| b.addr))?;
    gateway.wait_ready(&client).await?;
    let loaded = loading.elapsed().as_secs_f64();
    let rss = settled_rss(&gateway).await?;
    let per_bay = rss / bays as f64;
    println!(
        "gateway_load_s={loaded:.2} rss_loaded_mb={:.1} rss_bytes_per_bay={per_bay:.1} baseline_bytes_per_bay=16",
        rss / 1e6
    );
    println!("{}", ratio("rss_loaded_mb", rss / 1e6, 100.0, true));
    println!(
        "{}",
        ratio("rss_per_bay_vs_16_bytes", per_bay / 16.0, 4.0, true)
    );
    if !burst {
        return Ok(());
    }

    let baseline = raw_bulk_insert(dir.path(), bays).await?;
    println!("baseline_bulk_insert_s={baseline:.2}");
    let clients = publishers(&city, &gateway).await?;
    let batches = bridge_batches(&city, bays)?;
    let per_batch = bays as f64 / batches.len() as f64;
    let start = Instant::now();
    publish_paced(&gateway, &client, &clients, batches, per_batch, 0.0).await?;
    let published = start.elapsed().as_secs_f64();
    let outcome = until_written(&gateway, &client, bays as f64, start).await?;
    let mut lost = report("burst_bridges", bays, published, outcome);

    let singles = single_messages(&city, bays)?;
    let written = gateway
        .metric(&client, "parkflow_bay_states_written_total")
        .await?;
    let start = Instant::now();
    publish_paced(&gateway, &client, &clients, singles, 1.0, written).await?;
    let published = start.elapsed().as_secs_f64();
    let outcome = until_written(&gateway, &client, written + bays as f64, start).await?;
    lost += report("burst_single", bays, published, outcome);
    let applied = gateway
        .metric(&client, "parkflow_bay_events_total{outcome=\"applied\"}")
        .await?;
    // (+ 0.0: an empty sum is -0.0.)
    let rejected = gateway
        .metric_sum(&client, "parkflow_events_rejected_total{")
        .await?
        + 0.0;
    let rss_connected = gateway.rss()? as f64 / 1e6;
    // rumqttd counts each connection's publishes per topic until it closes: the bench's few
    // connections carry every bay's topic, where a real device's carries its own one or two.
    for publisher in &clients {
        publisher.disconnect().await?;
    }
    let rss_after = settled_rss(&gateway).await? / 1e6;
    println!(
        "applied={applied} expected={} lost={} rss_after_connected_mb={rss_connected:.1} rss_after_mb={rss_after:.1} rejected={rejected}",
        2 * bays,
        (2.0 * bays as f64 - applied).max(0.0),
    );
    println!("{}", ratio("rss_after_burst_mb", rss_after, 300.0, true));
    anyhow::ensure!(lost == 0.0, "{lost} bay states lost");
    Ok(())
}

/// `parkflow bench ingest`: signed sensor events, one message each, through the whole gateway
/// (verified, applied, durable) beside the same messages passed through the same broker to a
/// subscriber that only counts them.
///
/// With `mosquitto`, both go through a Mosquitto started for the run: the platform's window of
/// unacknowledged messages is then 1,000 (Mosquitto's `max_inflight_messages` there) instead of
/// rumqttd's fixed 100, which shows what bounds ingest on the embedded broker.
pub async fn ingest(events: usize, mosquitto: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database_url = format!("sqlite:{}", dir.path().join("ingest.db").display());
    let db = Db::connect(&database_url).await?;
    let city = provision_city(&db, events).await?;
    db.close().await;
    let broker = mosquitto_if(mosquitto, dir.path()).await?;
    println!(
        "scenario=ingest events={events} connections={CONNECTIONS} broker={}",
        if mosquitto { "mosquitto" } else { "embedded" }
    );
    let client = reqwest::Client::new();
    let mut gateway = Gateway::spawn(&database_url, broker.as_ref().map(|b| b.addr))?;
    gateway.wait_ready(&client).await?;
    let clients = publishers(&city, &gateway).await?;
    let messages = single_messages(&city, events)?;

    // The baseline: the same payloads on a topic the gateway does not read, to a counting subscriber.
    let (bridge, password, _) = city
        .bridge_keys
        .get(CONNECTIONS)
        .context("ingest needs more zones than publishing connections (at least 2,000 events)")?;
    // A bridge the publishers do not log in as (a login must use its own device id), or on the
    // embedded broker the platform's login (a device may not subscribe there).
    let counter = gateway.login("bench-counter", bridge.as_str(), password);
    let (count_tx, mut count_rx) = tokio::sync::mpsc::unbounded_channel();
    let (_counter, counting) = super::broker::client(
        "127.0.0.1",
        gateway.mqtt,
        &counter.0,
        (&counter.1.0, &counter.1.1),
        Some(count_tx),
        Some(("bench/raw/#".to_owned(), QoS::AtLeastOnce)),
    )
    .await
    .context("counting subscriber did not subscribe")?;
    let raw: Vec<(String, Vec<u8>)> = messages
        .iter()
        .enumerate()
        .map(|(i, (_, payload))| (format!("bench/raw/{}", i % 1_000), payload.clone()))
        .collect();
    // Paced as the gateway's run is: the counter, too, misses what falls out of the log.
    let window = window_events(gateway.log_mib, mean_bytes(&raw), 1.0) as usize;
    let start = Instant::now();
    let (mut published, mut received) = (0usize, 0usize);
    let mut raw = raw.into_iter().peekable();
    'publishing: while raw.peek().is_some() {
        let chunk: Vec<_> = raw.by_ref().take((window / 4).max(1)).collect();
        while (published + chunk.len()).saturating_sub(received) > window {
            match tokio::time::timeout(Duration::from_secs(10), count_rx.recv()).await {
                Ok(Some(_)) => received += 1,
                _ => break 'publishing,
            }
        }
        published += chunk.len();
        publish_all(&clients, chunk).await?;
    }
    while received < events {
        match tokio::time::timeout(Duration::from_secs(10), count_rx.recv()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    let raw_seconds = start.elapsed().as_secs_f64();
    counting.abort();
    let raw_rate = received as f64 / raw_seconds;
    println!(
        "raw_msgs_per_s={raw_rate:.0} raw_lost={}",
        events.saturating_sub(received)
    );

    let start = Instant::now();
    publish_paced(&gateway, &client, &clients, messages, 1.0, 0.0).await?;
    let outcome = until_written(&gateway, &client, events as f64, start).await?;
    let lost = match outcome {
        Ok(seconds) => {
            let rate = events as f64 / seconds;
            println!("gateway_events_per_s={rate:.0} gateway_lost=0");
            println!("{}", ratio("gateway_vs_raw", rate / raw_rate, 0.7, false));
            0.0
        }
        Err(lost) => {
            println!("gateway_lost={lost}");
            lost
        }
    };
    anyhow::ensure!(lost == 0.0 && received == events, "events lost");
    Ok(())
}
