//! Traffic in on-street zones: cars arrive at bays and leave on a daily curve, each bay's sensor
//! reports its changes (with `seq`) and heartbeats, cameras read plates (sometimes misread), some
//! sensors fall silent for a while, and some events are sent twice. A bridged zone's events go
//! in signed batches over its network-server bridge's MQTT connection (with a last will); every
//! other message (an unbridged zone's events, heartbeats, plate reads) goes out signed by and
//! under the login of its own sensor or camera, each connecting as it first speaks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use parkflow_protocol::sign::{plain, seal};
use parkflow_protocol::{
    BayPlateRead, BridgeBatch, BridgeEvent, DeviceAuth, DeviceId, EventId, Heartbeat,
    OccupancyEvent, Topic,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::city::{Driver, Zone, misread};
use crate::presence::Presence;

/// How the streets behave.
#[derive(Debug, Clone)]
pub struct StreetConfig {
    pub seed: u64,
    /// Mean stay of a car, and mean time a bay stays free at the busiest hour (real time).
    pub mean_stay: Duration,
    pub mean_free: Duration,
    pub heartbeat_every: Duration,
    /// Chance per heartbeat round that a sensor falls silent (for `silence`).
    pub silent_chance: f64,
    pub silence: Duration,
    /// Share of events sent twice (same event id and `seq`).
    pub duplicate_share: f64,
    pub misread_share: f64,
    pub tick: Duration,
    pub auth: DeviceAuth,
}

impl StreetConfig {
    /// Lively: a car every minute or two per bay, stays of a minute or two.
    pub fn demo() -> Self {
        Self {
            seed: 23,
            mean_stay: Duration::from_secs(90),
            mean_free: Duration::from_secs(60),
            heartbeat_every: Duration::from_secs(60),
            silent_chance: 0.01,
            silence: Duration::from_secs(20 * 60),
            duplicate_share: 0.05,
            misread_share: 0.05,
            tick: Duration::from_millis(500),
            auth: DeviceAuth::Signed,
        }
    }
}

/// How long a device stays at the end of a run for its last messages to be acknowledged.
const DRAIN: Duration = Duration::from_secs(10);

/// What the street traffic did, counted.
#[derive(Debug, Default)]
pub struct StreetStats {
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub heartbeats: AtomicU64,
    pub plates: AtomicU64,
    pub silenced: AtomicU64,
}

impl StreetStats {
    /// One line of `key=value` pairs.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "bay_events={} duplicates={} batches={} heartbeats={} plate_reads={} sensors_silenced={}",
            get(&self.events),
            get(&self.duplicates),
            get(&self.batches),
            get(&self.heartbeats),
            get(&self.plates),
            get(&self.silenced),
        )
    }
}

/// A zone's credentials: the bridge's login and key, each sensor's and camera's key.
#[derive(Clone)]
pub struct ZoneKeys {
    pub bridge: DeviceId,
    pub bridge_username: String,
    pub bridge_password: String,
    pub bridge_secret: String,
    pub sensors: Vec<String>,
    /// Empty in zones without cameras.
    pub cameras: Vec<String>,
    /// Each sensor's MQTT login (username, password): a sensor's own messages (its heartbeats,
    /// its state where no bridge carries it) go out under its own login, as a broker that holds
    /// each device to its topics requires.
    pub sensor_logins: Vec<(String, String)>,
    /// Each camera's MQTT login; empty in zones without cameras.
    pub camera_logins: Vec<(String, String)>,
}

/// Who sends a message of the zone: the bridge, or bay `i`'s sensor or camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sender {
    Bridge,
    Sensor(u32),
    Camera(u32),
}

/// Connects `id` under its login and polls its connection until `stop`, counting the broker's
/// acknowledgements into `acked`; it reconnects after a failure, as a device does.
fn connect_device(
    (id, username, password): (&str, &str, &str),
    (host, port): (&str, u16),
    acked: Arc<tokio::sync::watch::Sender<u64>>,
    stop: CancellationToken,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut options = MqttOptions::new(id, host, port);
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked.send_modify(|n| *n += 1),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                },
            }
        }
    });
    (client, poller)
}

/// How busy the streets are at `at`, local time in Hangzhou: a morning and an evening peak.
pub fn demand(at: DateTime<Utc>) -> f64 {
    let hour = (at.hour() + 8) % 24;
    match hour {
        0..=5 => 0.15,
        6..=7 | 20..=21 => 0.6,
        8..=10 | 17..=19 => 1.0,
        _ => 0.8,
    }
}

/// One bay as the simulator sees it.
#[derive(Debug, Clone, Copy)]
struct Bay {
    occupied: bool,
    seq: u64,
    next_change: DateTime<Utc>,
    next_heartbeat: DateTime<Utc>,
    silent_until: Option<DateTime<Utc>>,
}

fn exponential(rng: &mut StdRng, mean: Duration) -> chrono::Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let secs = -u.ln() * mean.as_secs_f64();
    chrono::Duration::milliseconds((secs * 1_000.0) as i64)
}

fn event_id() -> EventId {
    EventId::parse(&Uuid::new_v4().to_string())
        .unwrap_or_else(|_| unreachable!("a uuid is a valid id"))
}

/// Drives every zone until `token` is cancelled: one task and one MQTT connection per zone.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    zones: &[(Zone, ZoneKeys)],
    drivers: Arc<Vec<Driver>>,
    host: &str,
    port: u16,
    config: &StreetConfig,
    stats: Arc<StreetStats>,
    tracker: &TaskTracker,
    token: CancellationToken,
) {
    for (i, (zone, keys)) in zones.iter().enumerate() {
        let task = ZoneTask {
            zone: zone.clone(),
            keys: keys.clone(),
            drivers: drivers.clone(),
            config: config.clone(),
            stats: stats.clone(),
            rng: StdRng::seed_from_u64(config.seed.wrapping_add(i as u64)),
        };
        let (host, token) = (host.to_owned(), token.clone());
        tracker.spawn(async move { task.run(host, port, token).await });
    }
}

struct ZoneTask {
    zone: Zone,
    keys: ZoneKeys,
    drivers: Arc<Vec<Driver>>,
    config: StreetConfig,
    stats: Arc<StreetStats>,
    rng: StdRng,
}

impl ZoneTask {
    fn seal<T: serde::Serialize>(
        &self,
        topic: &Topic,
        body: &T,
        kid: &DeviceId,
        secret: &str,
    ) -> Vec<u8> {
        match self.config.auth {
            DeviceAuth::Signed => seal(topic, body, kid, secret.as_bytes()),
            DeviceAuth::Broker => plain(topic, body),
        }
    }

    async fn run(mut self, host: String, port: u16, token: CancellationToken) {
        let mut presence = Presence::new(
            self.keys.bridge.clone(),
            self.keys.bridge_secret.clone(),
            self.config.auth,
        );
        let mut options = MqttOptions::new(self.keys.bridge.as_str(), host.as_str(), port);
        options.set_credentials(&self.keys.bridge_username, &self.keys.bridge_password);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        options.set_last_will(presence.next_connection());
        let (client, mut eventloop) = AsyncClient::new(options, 2_000);
        // QoS 1 messages handed to the client, and the broker's acknowledgements: at the end the
        // device stays until everything it sent is acknowledged, as a real one keeps its events.
        let published = Arc::new(AtomicU64::new(0));
        let (acked_tx, mut acked) = tokio::sync::watch::channel(0_u64);
        let acked_tx = Arc::new(acked_tx);
        let device_acked = acked_tx.clone();
        let stop_polling = CancellationToken::new();
        // The bay devices' own connections, opened as each first speaks.
        let mut devices: HashMap<Sender, (AsyncClient, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let poll_token = stop_polling.clone();
        let online = client.clone();
        let online_published = published.clone();
        let poller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = poll_token.cancelled() => break,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if online.try_publish(presence.topic(), QoS::AtLeastOnce, true, presence.online()).is_ok() {
                                online_published.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked_tx.send_modify(|n| *n += 1),
                        Ok(_) => {}
                        Err(_) => {
                            eventloop.mqtt_options.set_last_will(presence.next_connection());
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    },
                }
            }
        });

        let now = Utc::now();
        let mut bays: Vec<Bay> = (0..self.zone.bays)
            .map(|_| Bay {
                occupied: self.rng.random_bool(0.5),
                seq: 0,
                next_change: now,
                next_heartbeat: now + exponential(&mut self.rng, self.config.heartbeat_every),
                silent_until: None,
            })
            .collect();
        let mut ticker = tokio::time::interval(self.config.tick);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let now = Utc::now();
            let mut events = Vec::new();
            let mut singles = Vec::new();
            for (i, bay) in bays.iter_mut().enumerate() {
                let i = i as u32;
                if bay.silent_until.is_some_and(|until| until > now) {
                    continue;
                }
                bay.silent_until = None;
                if bay.next_change <= now {
                    // The first report tells the bay's state as found; later ones, each change.
                    if bay.seq > 0 {
                        bay.occupied = !bay.occupied;
                    }
                    bay.seq += 1;
                    let wait = if bay.occupied {
                        exponential(&mut self.rng, self.config.mean_stay)
                    } else {
                        let mean = self.config.mean_free.as_secs_f64() / demand(now);
                        exponential(&mut self.rng, Duration::from_secs_f64(mean))
                    };
                    bay.next_change = now + wait;
                    events.push((i, bay.occupied, bay.seq));
                }
                if bay.next_heartbeat <= now {
                    bay.next_heartbeat = now
                        + chrono::Duration::from_std(self.config.heartbeat_every)
                            .unwrap_or_default();
                    if self.rng.random_bool(self.config.silent_chance) {
                        bay.silent_until = Some(
                            now + chrono::Duration::from_std(self.config.silence)
                                .unwrap_or_default(),
                        );
                        self.stats.silenced.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    singles.push(self.heartbeat(i, bay, now));
                }
            }
            for &(i, occupied, _) in &events {
                if occupied && !self.keys.cameras.is_empty() {
                    singles.push(self.plate(i, now));
                }
            }
            let mut messages = self.occupancy(&events, now);
            messages.append(&mut singles);
            for (sender, topic, payload) in messages {
                let via = match self.login(sender) {
                    None => &client,
                    Some((id, (username, password))) => {
                        &devices
                            .entry(sender)
                            .or_insert_with(|| {
                                connect_device(
                                    (id.as_str(), username, password),
                                    (&host, port),
                                    device_acked.clone(),
                                    stop_polling.clone(),
                                )
                            })
                            .0
                    }
                };
                if via
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sent = published.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(DRAIN, acked.wait_for(|n| *n >= sent)).await;
        let _ = client.disconnect().await;
        for (device, _) in devices.values() {
            let _ = device.disconnect().await;
        }
        stop_polling.cancel();
        let _ = poller.await;
        for (_, poller) in devices.into_values() {
            let _ = poller.await;
        }
    }

    /// A bay device's id and login; `None` for the bridge (its connection is the zone's own).
    fn login(&self, sender: Sender) -> Option<(DeviceId, &(String, String))> {
        match sender {
            Sender::Bridge => None,
            Sender::Sensor(i) => Some((self.zone.sensor(i), &self.keys.sensor_logins[i as usize])),
            Sender::Camera(i) => Some((self.zone.camera(i), &self.keys.camera_logins[i as usize])),
        }
    }

    fn heartbeat(&self, i: u32, bay: &Bay, now: DateTime<Utc>) -> (Sender, String, Vec<u8>) {
        let topic = Topic::BayHeartbeat {
            lot: self.zone.id.clone(),
            bay: self.zone.bay(i),
        };
        let body = Heartbeat {
            observed_at: now,
            occupied: bay.occupied,
            seq: bay.seq,
            battery_pct: Some(60 + (i % 40) as u8),
        };
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let payload = self.seal(
            &topic,
            &body,
            &self.zone.sensor(i),
            &self.keys.sensors[i as usize],
        );
        (Sender::Sensor(i), topic.to_string(), payload)
    }

    fn plate(&mut self, i: u32, now: DateTime<Utc>) -> (Sender, String, Vec<u8>) {
        let driver = &self.drivers[self.rng.random_range(0..self.drivers.len())];
        let read = if self.rng.random_bool(self.config.misread_share) {
            misread(&driver.plate, &mut self.rng)
                .unwrap_or_else(|| driver.plate.as_str().to_owned())
        } else {
            driver.plate.as_str().to_owned()
        };
        let topic = Topic::BayPlate {
            lot: self.zone.id.clone(),
            bay: self.zone.bay(i),
        };
        let body = BayPlateRead {
            event_id: event_id(),
            plate: read,
            plate_color: Some(driver.plate_color),
            confidence: self.rng.random_range(0.6..0.99),
            observed_at: now,
        };
        self.stats.plates.fetch_add(1, Ordering::Relaxed);
        let payload = self.seal(
            &topic,
            &body,
            &self.zone.camera(i),
            &self.keys.cameras[i as usize],
        );
        (Sender::Camera(i), topic.to_string(), payload)
    }

    /// The round's occupancy events: batches for a bridged zone, one message each otherwise;
    /// some are sent twice.
    fn occupancy(
        &mut self,
        events: &[(u32, bool, u64)],
        now: DateTime<Utc>,
    ) -> Vec<(Sender, String, Vec<u8>)> {
        let mut messages = Vec::new();
        if self.zone.bridged {
            let topic = Topic::BridgeOccupancy {
                device: self.keys.bridge.clone(),
            };
            for chunk in events.chunks(BridgeBatch::MAX_EVENTS) {
                let batch = BridgeBatch {
                    events: chunk
                        .iter()
                        .map(|&(i, occupied, seq)| BridgeEvent {
                            lot: self.zone.id.clone(),
                            bay: self.zone.bay(i),
                            event_id: event_id(),
                            occupied,
                            observed_at: now,
                            seq,
                        })
                        .collect(),
                };
                let payload =
                    self.seal(&topic, &batch, &self.keys.bridge, &self.keys.bridge_secret);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .events
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if self.rng.random_bool(self.config.duplicate_share) {
                    self.stats
                        .duplicates
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    messages.push((Sender::Bridge, topic.to_string(), payload.clone()));
                }
                messages.push((Sender::Bridge, topic.to_string(), payload));
            }
        } else {
            for &(i, occupied, seq) in events {
                let topic = Topic::BayOccupancy {
                    lot: self.zone.id.clone(),
                    bay: self.zone.bay(i),
                };
                let body = OccupancyEvent {
                    event_id: event_id(),
                    occupied,
                    observed_at: now,
                    seq,
                    battery_pct: None,
                };
                let payload = self.seal(
                    &topic,
                    &body,
                    &self.zone.sensor(i),
                    &self.keys.sensors[i as usize],
                );
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                if self.rng.random_bool(self.config.duplicate_share) {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    messages.push((Sender::Sensor(i), topic.to_string(), payload.clone()));
                }
                messages.push((Sender::Sensor(i), topic.to_string(), payload));
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_peaks_in_the_morning_and_evening_rush() {
        let at = |utc_hour: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
                .and_then(|d| d.and_hms_opt(utc_hour, 0, 0))
                .map(|t| t.and_utc())
                .unwrap()
        };
        // 09:00 and 18:00 in Hangzhou are 01:00 and 10:00 UTC.
        assert_eq!(demand(at(1)), 1.0);
        assert_eq!(demand(at(10)), 1.0);
        assert!(demand(at(19)) < 0.2, "03:00 local is quiet");
    }
}
