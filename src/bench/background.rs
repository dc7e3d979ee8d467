//! Sensor traffic in the background of a latency bench: one on-street zone's sensors reporting at
//! a fixed rate (nine heartbeats, QoS 0, to one occupancy change, QoS 1), signed, through their
//! own connection — so the barrier's round trip is measured beside a city's chatter.

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use parkflow_gateway::registry::{DeviceKind, LotKind};
use parkflow_gateway::store::provision::{DevicePlan, LotPlan};
use parkflow_protocol::sign::seal;
use parkflow_protocol::{
    BayId, DeviceAuth, DeviceId, EventId, Heartbeat, LotId, OccupancyEvent, Topic,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use crate::demo::demo_tariff;
use crate::platform::random_device_key;

/// Messages per tick are sent together; ticks are this far apart.
const TICK: Duration = Duration::from_millis(10);

/// A zone of bays with a sensor each, and the keys they sign with.
pub struct SensorZone {
    pub lot: LotId,
    sensors: Vec<(BayId, DeviceId, String)>,
    login: (String, String),
}

impl SensorZone {
    /// A zone of `bays` bays under `operator`, and its provisioning plan (lot and devices).
    pub fn new(
        lot: &str,
        operator: &str,
        bays: u32,
    ) -> anyhow::Result<(Self, LotPlan, Vec<DevicePlan>)> {
        let lot = LotId::parse(lot)?;
        let mut sensors = Vec::with_capacity(bays as usize);
        let mut devices = Vec::with_capacity(bays as usize);
        for b in 0..bays {
            let bay = BayId::parse(&format!("b-{b:05}"))?;
            let id = DeviceId::parse(&format!("s-{lot}-{b:05}"))?;
            let secret = random_device_key();
            devices.push(DevicePlan {
                id: id.clone(),
                kind: DeviceKind::BaySensor,
                lot: Some(lot.clone()),
                gate: None,
                bay: Some(bay.clone()),
                mqtt_username: id.to_string(),
                secret: secret.clone().into(),
            });
            sensors.push((bay, id, secret));
        }
        let login = devices
            .first()
            .map(|d| {
                (
                    d.mqtt_username.clone(),
                    d.mqtt_password().expose_secret().to_owned(),
                )
            })
            .unwrap_or_default();
        let plan = LotPlan {
            id: lot.clone(),
            operator_id: operator.into(),
            name: "Background zone".into(),
            kind: LotKind::OnStreet,
            lat: 30.01,
            lon: 120.01,
            capacity: bays,
            time_zone: "Asia/Shanghai".into(),
            device_auth: DeviceAuth::Signed,
            gates: Vec::new(),
            bays: sensors.iter().map(|(bay, _, _)| bay.clone()).collect(),
            max_stay_minutes: None,
            offline_policy: Default::default(),
            tariffs: vec![demo_tariff(0)],
        };
        Ok((
            Self {
                lot,
                sensors,
                login,
            },
            plan,
            devices,
        ))
    }

    /// The zone's first sensor's client id and login.
    pub fn sensor_login(&self) -> (String, (String, String)) {
        (self.login.0.clone(), self.login.clone())
    }

    /// Publishes `rate` messages a second through the broker at `host:port`, connected as
    /// `client_id` with `login`, until `token` is cancelled; counts what it sent in `sent`.
    pub async fn run(
        self: Arc<Self>,
        host: String,
        port: u16,
        (client_id, (user, password)): (String, (String, String)),
        rate: u32,
        sent: Arc<AtomicU64>,
        token: CancellationToken,
    ) -> anyhow::Result<()> {
        // The zone speaks through one connection, for every sensor: an open broker lets its
        // first sensor do that, the embedded one only the platform's login.
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_credentials(user, password);
        options.set_inflight(1_000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let poll_token = token.clone();
        let poller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = poll_token.cancelled() => break,
                    event = eventloop.poll() => if event.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    },
                }
            }
        });
        let per_tick = (rate as usize * TICK.as_millis() as usize / 1_000).max(1);
        let mut seq = vec![0u64; self.sensors.len()];
        let mut occupied = vec![false; self.sensors.len()];
        let mut next = 0usize;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            for _ in 0..per_tick {
                let i = next % self.sensors.len();
                next += 1;
                n += 1;
                let (bay, device, secret) = &self.sensors[i];
                let now = Utc::now();
                let (topic, qos, payload) = if n.is_multiple_of(10) {
                    seq[i] += 1;
                    occupied[i] = !occupied[i];
                    let topic = Topic::BayOccupancy {
                        lot: self.lot.clone(),
                        bay: bay.clone(),
                    };
                    let body = OccupancyEvent {
                        event_id: EventId::parse(&uuid::Uuid::new_v4().to_string())?,
                        occupied: occupied[i],
                        observed_at: now,
                        seq: seq[i],
                        battery_pct: Some(80),
                    };
                    let payload = seal(&topic, &body, device, secret.as_bytes());
                    (topic, QoS::AtLeastOnce, payload)
                } else {
                    let topic = Topic::BayHeartbeat {
                        lot: self.lot.clone(),
                        bay: bay.clone(),
                    };
                    let body = Heartbeat {
                        observed_at: now,
                        occupied: occupied[i],
                        seq: seq[i],
                        battery_pct: Some(80),
                    };
                    let payload = seal(&topic, &body, device, secret.as_bytes());
                    (topic, QoS::AtMostOnce, payload)
                };
                if client
                    .try_publish(topic.to_string(), qos, false, payload)
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let _ = client.try_disconnect();
        let _ = poller.await;
        Ok(())
    }
}
