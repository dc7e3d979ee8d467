//! Bay occupancy end to end: bay sensors, bay cameras and a bridge talk MQTT; the test reads
//! availability, stays and review cases through the HTTP API, as a navigation app and an
//! operator would. Runs on SQLite and PostgreSQL with the embedded broker, and with Mosquitto.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Broker, Database, Setup, TestPlatform, World, eventually};
use chrono::{DateTime, Utc};
use parkflow_gateway::registry::{DeviceKind, LotKind, mqtt_password};
use parkflow_gateway::store::provision::{DevicePlan, LotPlan, PassPlan};
use parkflow_protocol::sign::{plain, seal};
use parkflow_protocol::{
    BayId, BayPlateRead, BridgeEvent, DeviceAuth, DeviceId, DeviceStatus, Direction, EventId,
    Heartbeat, LotId, OccupancyEvent, PlateColor, StatusReport, Topic,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);
const BAYS: usize = 6;

/// An on-street zone of [`BAYS`] bays, each with a sensor and a camera, and a bridge, added to
/// the gated test world.
#[derive(Clone)]
pub(crate) struct Zone {
    pub(crate) lot: LotId,
    bays: Vec<BayId>,
    sensors: Vec<(DeviceId, String)>,
    cameras: Vec<(DeviceId, String)>,
    bridge: (DeviceId, String, String),
    auth: DeviceAuth,
}

impl Zone {
    fn add_to(world: &mut World, setup: Setup) -> Self {
        let suffix = &Uuid::new_v4().simple().to_string()[..10];
        let lot = LotId::parse(&format!("zone-{suffix}")).unwrap();
        let bays: Vec<BayId> = (0..BAYS)
            .map(|i| BayId::parse(&format!("b-{i:02}")).unwrap())
            .collect();
        let device = |kind: &str, i: usize| {
            (
                DeviceId::parse(&format!("{kind}-{suffix}-{i}")).unwrap(),
                format!("secret-{}", Uuid::new_v4()),
            )
        };
        let sensors: Vec<_> = (0..BAYS).map(|i| device("sensor", i)).collect();
        let cameras: Vec<_> = (0..BAYS).map(|i| device("bcam", i)).collect();
        let bridge_secret = format!("secret-{}", Uuid::new_v4());
        let bridge = (
            DeviceId::parse(&format!("bridge-{suffix}")).unwrap(),
            mqtt_password(&bridge_secret),
            bridge_secret,
        );
        let mut zone_plan = world.plan.lots[0].clone();
        zone_plan = LotPlan {
            id: lot.clone(),
            name: "Test zone".into(),
            kind: LotKind::OnStreet,
            lat: 30.2600,
            lon: 120.1600,
            capacity: BAYS as u32,
            gates: Vec::new(),
            bays: bays.clone(),
            ..zone_plan
        };
        world.plan.lots.push(zone_plan);
        let plan_device = |id: &DeviceId, kind, bay: Option<&BayId>, secret: &str| DevicePlan {
            id: id.clone(),
            kind,
            lot: Some(lot.clone()),
            gate: None,
            bay: bay.cloned(),
            mqtt_username: id.to_string(),
            secret: secret.to_owned().into(),
        };
        for (i, bay) in bays.iter().enumerate() {
            world.plan.devices.push(plan_device(
                &sensors[i].0,
                DeviceKind::BaySensor,
                Some(bay),
                &sensors[i].1,
            ));
            world.plan.devices.push(plan_device(
                &cameras[i].0,
                DeviceKind::BayCamera,
                Some(bay),
                &cameras[i].1,
            ));
        }
        world
            .plan
            .devices
            .push(plan_device(&bridge.0, DeviceKind::Bridge, None, &bridge.2));
        // The gated lot's pass holder holds a pass for the zone too.
        world.plan.passes.push(PassPlan {
            lot: lot.clone(),
            plate: world.pass_holder.clone(),
            valid_from: Utc::now() - chrono::Duration::days(1),
            valid_until: Utc::now() + chrono::Duration::days(30),
        });
        Self {
            lot,
            bays,
            sensors,
            cameras,
            bridge,
            auth: setup.device_auth(),
        }
    }

    fn encode<T: serde::Serialize>(
        &self,
        topic: &Topic,
        body: &T,
        signer: &(DeviceId, String),
    ) -> Vec<u8> {
        match self.auth {
            DeviceAuth::Signed => seal(topic, body, &signer.0, signer.1.as_bytes()),
            DeviceAuth::Broker => plain(topic, body),
        }
    }

    pub(crate) fn occupancy(
        &self,
        bay: usize,
        occupied: bool,
        seq: u64,
        at: DateTime<Utc>,
    ) -> (String, Vec<u8>) {
        let topic = Topic::BayOccupancy {
            lot: self.lot.clone(),
            bay: self.bays[bay].clone(),
        };
        let body = OccupancyEvent {
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            occupied,
            observed_at: at,
            seq,
            battery_pct: Some(80),
        };
        (
            topic.to_string(),
            self.encode(&topic, &body, &self.sensors[bay]),
        )
    }

    /// Bay `bay`'s sensor reports its connection `connection` as `status`, as its own (or its
    /// last will) would.
    fn status(&self, bay: usize, status: DeviceStatus, connection: &str) -> (String, Vec<u8>) {
        let topic = Topic::DeviceStatus {
            device: self.sensors[bay].0.clone(),
        };
        let body = StatusReport {
            status,
            connection: connection.to_owned(),
            observed_at: Utc::now(),
        };
        (
            topic.to_string(),
            self.encode(&topic, &body, &self.sensors[bay]),
        )
    }

    fn heartbeat(&self, bay: usize, occupied: bool, seq: u64) -> (String, Vec<u8>) {
        self.heartbeat_with_battery(bay, occupied, seq, 80)
    }

    fn heartbeat_with_battery(
        &self,
        bay: usize,
        occupied: bool,
        seq: u64,
        battery: u8,
    ) -> (String, Vec<u8>) {
        let topic = Topic::BayHeartbeat {
            lot: self.lot.clone(),
            bay: self.bays[bay].clone(),
        };
        let body = Heartbeat {
            observed_at: Utc::now(),
            occupied,
            seq,
            battery_pct: Some(battery),
        };
        (
            topic.to_string(),
            self.encode(&topic, &body, &self.sensors[bay]),
        )
    }

    fn plate(
        &self,
        bay: usize,
        plate: &str,
        confidence: f64,
        at: DateTime<Utc>,
    ) -> (String, Vec<u8>) {
        let topic = Topic::BayPlate {
            lot: self.lot.clone(),
            bay: self.bays[bay].clone(),
        };
        let body = BayPlateRead {
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            plate: plate.to_owned(),
            plate_color: Some(PlateColor::Blue),
            confidence,
            observed_at: at,
        };
        (
            topic.to_string(),
            self.encode(&topic, &body, &self.cameras[bay]),
        )
    }

    fn event(&self, bay: &str, occupied: bool, seq: u64, at: DateTime<Utc>) -> Value {
        serde_json::to_value(BridgeEvent {
            lot: self.lot.clone(),
            bay: BayId::parse(bay).unwrap(),
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            occupied,
            observed_at: at,
            seq,
        })
        .unwrap()
    }

    /// A bridge batch of raw entries (so a test can slip bad ones in).
    fn batch(&self, events: Vec<Value>) -> (String, Vec<u8>) {
        let topic = Topic::BridgeOccupancy {
            device: self.bridge.0.clone(),
        };
        let body = serde_json::json!({ "events": events });
        let signer = (self.bridge.0.clone(), self.bridge.2.clone());
        (topic.to_string(), self.encode(&topic, &body, &signer))
    }
}

/// MQTT connections that publish for the zone's devices, each message from the device whose
/// topic it is, under its own login, as the devices themselves would: a broker that holds each
/// device to its own topics lets nothing else through. A topic no zone device owns goes out
/// under the bridge's login.
#[derive(Clone)]
pub(crate) struct Publisher(Arc<Publishers>);

struct Publishers {
    mqtt: (String, u16),
    logins: bool,
    owners: HashMap<String, (String, String)>,
    bridge: (String, String),
    connections: tokio::sync::Mutex<HashMap<String, Connection>>,
}

struct Connection {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    fn for_zone(platform: &TestPlatform, zone: &Zone) -> Self {
        let mut owners = HashMap::new();
        let login = |(id, secret): &(DeviceId, String)| (id.to_string(), mqtt_password(secret));
        let status = |id: &DeviceId| Topic::DeviceStatus { device: id.clone() }.to_string();
        for (i, bay) in zone.bays.iter().enumerate() {
            let (lot, bay) = (zone.lot.clone(), bay.clone());
            let sensor = login(&zone.sensors[i]);
            let camera = login(&zone.cameras[i]);
            for topic in [
                Topic::BayOccupancy {
                    lot: lot.clone(),
                    bay: bay.clone(),
                }
                .to_string(),
                Topic::BayHeartbeat {
                    lot: lot.clone(),
                    bay: bay.clone(),
                }
                .to_string(),
                status(&zone.sensors[i].0),
            ] {
                owners.insert(topic, sensor.clone());
            }
            owners.insert(Topic::BayPlate { lot, bay }.to_string(), camera.clone());
            owners.insert(status(&zone.cameras[i].0), camera);
        }
        let bridge = (zone.bridge.0.to_string(), zone.bridge.1.clone());
        owners.insert(
            Topic::BridgeOccupancy {
                device: zone.bridge.0.clone(),
            }
            .to_string(),
            bridge.clone(),
        );
        Self(Arc::new(Publishers {
            mqtt: platform.mqtt.clone(),
            logins: platform.setup.broker.checks_logins(),
            owners,
            bridge,
            connections: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Connects as `(client id, password)` and waits for the broker's CONNACK.
    async fn connect(&self, (client_id, password): &(String, String)) -> Connection {
        let mut options = MqttOptions::new(client_id, &self.0.mqtt.0, self.0.mqtt.1);
        if self.0.logins {
            options.set_credentials(client_id, password);
        }
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 1_000);
        let (connected_tx, mut connected) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = connected_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected.recv())
            .await
            .expect("publisher connected");
        Connection { client, task }
    }

    pub(crate) async fn send(&self, message: (String, Vec<u8>)) {
        self.send_with(QoS::AtLeastOnce, message).await;
    }

    async fn send_with(&self, qos: QoS, (topic, payload): (String, Vec<u8>)) {
        let owner = self.0.owners.get(&topic).unwrap_or(&self.0.bridge);
        let mut connections = self.0.connections.lock().await;
        if !connections.contains_key(&owner.0) {
            let connection = self.connect(owner).await;
            connections.insert(owner.0.clone(), connection);
        }
        connections[&owner.0]
            .client
            .publish(topic, qos, false, payload)
            .await
            .unwrap();
    }
}

async fn availability(platform: &TestPlatform, lot: &LotId) -> Value {
    reqwest::get(platform.url(&format!("/v1/lots/{lot}/availability")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn counts(a: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| a[k].as_u64().unwrap();
    let c = (n("total"), n("free"), n("occupied"), n("unknown"));
    assert_eq!(
        c.1 + c.2 + c.3,
        c.0,
        "free + occupied + unknown = total: {a}"
    );
    c
}

/// Waits until the lot's `(free, occupied, unknown)` are as expected.
async fn wait_counts(platform: &TestPlatform, lot: &LotId, expected: (u64, u64, u64), what: &str) {
    eventually(WAIT, what, || async {
        let (_, free, occupied, unknown) = counts(&availability(platform, lot).await);
        ((free, occupied, unknown) == expected).then_some(())
    })
    .await;
}

pub(crate) async fn start(setup: Setup) -> (World, Zone, TestPlatform, Publisher) {
    start_with(setup, |_| {}).await
}

async fn start_with(
    setup: Setup,
    configure: impl Fn(&mut parkflow::PlatformConfig) + Send + Sync + 'static,
) -> (World, Zone, TestPlatform, Publisher) {
    let mut world = World::new(setup, 10);
    let zone = Zone::add_to(&mut world, setup);
    let platform = TestPlatform::start_with(setup, &world, configure).await;
    let publisher = Publisher::for_zone(&platform, &zone);
    (world, zone, platform, publisher)
}

async fn events_apply_by_seq_and_repeats_and_bad_entries_change_nothing(setup: Setup) {
    let (_world, zone, mut platform, publisher) = start(setup).await;
    let now = Utc::now();
    assert_eq!(
        counts(&availability(&platform, &zone.lot).await),
        (6, 0, 0, 6)
    );

    // Out of order: seq 3 (occupied) arrives before seq 2 (free); a repeat of seq 3 says free.
    publisher.send(zone.occupancy(0, true, 3, now)).await;
    publisher.send(zone.occupancy(0, false, 2, now)).await;
    publisher.send(zone.occupancy(0, false, 3, now)).await;
    publisher.send(zone.occupancy(1, false, 1, now)).await;
    wait_counts(
        &platform,
        &zone.lot,
        (1, 1, 4),
        "bay 0 occupied, bay 1 free",
    )
    .await;

    // A bridge batch: three good entries and four bad ones.
    let mut malformed = zone.event("b-05", true, 1, now);
    malformed["seq"] = Value::from("seven");
    publisher
        .send(zone.batch(vec![
            zone.event("b-02", true, 1, now),
            zone.event("b-03", true, 1, now),
            zone.event("no-such-bay", true, 1, now),
            zone.event("b-04", false, 1, now),
            malformed,
            zone.event("b-05", true, 2, now - chrono::Duration::days(4)),
        ]))
        .await;
    let mut foreign = zone.event("b-05", true, 3, now);
    foreign["lot"] = Value::from("some-other-lot");
    publisher.send(zone.batch(vec![foreign])).await;
    wait_counts(
        &platform,
        &zone.lot,
        (2, 3, 1),
        "the batch's good entries applied",
    )
    .await;
    let rejected = |reason: &str| {
        let series = format!("parkflow_events_rejected_total{{reason=\"{reason}\"}}");
        let platform = &platform;
        async move { platform.metric(&series).await }
    };
    eventually(WAIT, "the bad entries counted", || async {
        (rejected("unknown_bay").await == 1.0
            && rejected("malformed").await == 1.0
            && rejected("too_old").await == 1.0
            && rejected("not_registered").await == 1.0)
            .then_some(())
    })
    .await;

    if zone.auth == DeviceAuth::Signed {
        // Bay 1's sensor signs for bay 0: a valid signature, but not its bay.
        let (topic, _) = zone.occupancy(0, true, 9, now);
        let body = OccupancyEvent {
            event_id: EventId::parse(&Uuid::new_v4().to_string()).unwrap(),
            occupied: false,
            observed_at: now,
            seq: 9,
            battery_pct: None,
        };
        let forged = seal(
            &Topic::parse(&topic).unwrap(),
            &body,
            &zone.sensors[1].0,
            zone.sensors[1].1.as_bytes(),
        );
        publisher.send((topic, forged)).await;
        eventually(WAIT, "the forged event counted", || async {
            (rejected("not_registered").await == 2.0).then_some(())
        })
        .await;
    }
    assert_eq!(
        counts(&availability(&platform, &zone.lot).await),
        (6, 2, 3, 1)
    );

    // Durable: after a restart the state comes back from the database, and a late repeat of an
    // old event still changes nothing.
    eventually(WAIT, "bay states written", || async {
        (platform.metric("parkflow_bay_states_written_total").await >= 5.0).then_some(())
    })
    .await;
    drop(publisher);
    platform.restart().await;
    assert_eq!(
        counts(&availability(&platform, &zone.lot).await),
        (6, 2, 3, 1)
    );
    let publisher = Publisher::for_zone(&platform, &zone);
    publisher.send(zone.occupancy(0, false, 3, now)).await;
    publisher.send(zone.occupancy(5, true, 1, now)).await;
    wait_counts(
        &platform,
        &zone.lot,
        (2, 4, 0),
        "bay 5 applied after the restart",
    )
    .await;
    drop(publisher);
    platform.stop().await;
}

async fn a_silent_sensor_turns_its_bay_unknown_and_availability_stays_consistent(setup: Setup) {
    // Sensors at test speed: silent for three seconds is silent.
    let (_world, zone, platform, publisher) = start_with(setup, |config| {
        config.occupancy.heartbeat_deadline = chrono::Duration::seconds(3);
    })
    .await;
    for bay in 0..BAYS {
        publisher.send(zone.heartbeat(bay, bay % 2 == 0, 0)).await;
    }
    wait_counts(&platform, &zone.lot, (3, 3, 0), "every bay heard").await;

    // Every sensor but bay 0's keeps beating; bay 0 (occupied) falls silent past its deadline.
    let beating = tokio::spawn({
        let publisher = publisher.clone();
        let zone = zone.clone();
        async move {
            for _ in 0..10 {
                for bay in 1..BAYS {
                    let heartbeat = zone.heartbeat(bay, bay % 2 == 0, 0);
                    publisher.send_with(QoS::AtMostOnce, heartbeat).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    wait_counts(&platform, &zone.lot, (3, 2, 1), "bay 0 unknown once silent").await;
    let availability_now = availability(&platform, &zone.lot).await;
    assert_eq!(availability_now["status"], "spacesAvailable");

    // The operator sees which sensor is silent and which one's battery is low.
    publisher
        .send(zone.heartbeat_with_battery(4, true, 0, 12))
        .await;
    let bays = eventually(WAIT, "bay 4's low battery visible", || async {
        let bays = platform
            .admin_get(&format!("/v1/lots/{}/bays", zone.lot))
            .await;
        (bays[4]["battery_low"] == true).then_some(bays)
    })
    .await;
    assert_eq!(bays.as_array().unwrap().len(), BAYS);
    assert_eq!(bays[0]["bay"], "b-00");
    assert_eq!(bays[0]["state"], "unknown");
    assert!(bays[0]["heard_at"].is_string());
    assert_eq!(bays[1]["battery_low"], false);
    assert!(
        bays[0]["stay_started_at"].is_string(),
        "bay 0's stay stays open while it is unknown"
    );
    eventually(WAIT, "the low battery counted", || async {
        (platform.metric("parkflow_bays_battery_low").await == 1.0).then_some(())
    })
    .await;

    // Bay 2's sensor connects (connection c-2). A forged `offline` (unsigned, or signed by
    // another sensor) and a replayed one from an earlier connection change nothing.
    publisher
        .send(zone.status(2, DeviceStatus::Online, "c-2"))
        .await;
    let status_topic = Topic::DeviceStatus {
        device: zone.sensors[2].0.clone(),
    };
    let forged_by_other = {
        let body = StatusReport {
            status: DeviceStatus::Offline,
            connection: "c-2".into(),
            observed_at: Utc::now(),
        };
        zone.encode(&status_topic, &body, &zone.sensors[3])
    };
    let rejected = |reason: &'static str| {
        let platform = &platform;
        async move {
            platform
                .metric(&format!(
                    "parkflow_events_rejected_total{{reason=\"{reason}\"}}"
                ))
                .await
        }
    };
    let stale_before = rejected("stale_status").await;
    publisher
        .send((status_topic.to_string(), b"offline".to_vec()))
        .await;
    if zone.auth == DeviceAuth::Signed {
        // (With `device_auth: broker` the broker is trusted to keep others off this topic.)
        publisher
            .send((status_topic.to_string(), forged_by_other))
            .await;
    }
    publisher
        .send(zone.status(2, DeviceStatus::Offline, "c-1"))
        .await;
    eventually(WAIT, "the replayed offline refused as stale", || async {
        (rejected("stale_status").await > stale_before).then_some(())
    })
    .await;
    let bays = platform
        .admin_get(&format!("/v1/lots/{}/bays", zone.lot))
        .await;
    assert_ne!(
        bays[2]["state"], "unknown",
        "the forged and replayed offlines changed nothing"
    );

    // The sensor's last will (the signed offline of its connection): its bay is unknown at once,
    // and known again when it speaks.
    publisher
        .send(zone.status(2, DeviceStatus::Offline, "c-2"))
        .await;
    wait_counts(
        &platform,
        &zone.lot,
        (3, 1, 2),
        "bay 2 unknown while offline",
    )
    .await;
    beating.await.unwrap();
    publisher.send(zone.heartbeat(0, true, 0)).await;
    publisher.send(zone.heartbeat(2, true, 0)).await;
    // Bays 1..5 stopped beating too; whatever has expired, the counts always add up.
    eventually(WAIT, "bays 0 and 2 heard again", || async {
        let a = availability(&platform, &zone.lot).await;
        let (_, _, occupied, _) = counts(&a);
        (occupied >= 2).then_some(())
    })
    .await;
    platform.stop().await;
}

async fn a_stay_with_a_plate_is_priced_and_one_without_goes_to_review(setup: Setup) {
    let (world, zone, platform, publisher) = start(setup).await;
    // Bay 0's camera logs in with its own credentials (checked against the database).
    let cameras = publisher.clone();
    let arrived = Utc::now() - chrono::Duration::minutes(40);
    publisher.send(zone.occupancy(0, true, 1, arrived)).await;
    publisher.send(zone.occupancy(1, true, 1, arrived)).await;
    // Two reads of bay 0's car: the better one wins.
    cameras
        .send(zone.plate(0, "浙A0B81B", 0.6, arrived + chrono::Duration::seconds(5)))
        .await;
    cameras
        .send(zone.plate(
            0,
            world.enrolled.as_str(),
            0.95,
            arrived + chrono::Duration::seconds(9),
        ))
        .await;
    eventually(WAIT, "two stays open", || async {
        (platform.metric("parkflow_bay_sessions_opened_total").await == 2.0).then_some(())
    })
    .await;
    // The plate reads travel on another connection: the best one is attached before the car leaves.
    wait_plate(&platform, &zone, 0, 0.95).await;
    let left = Utc::now();
    publisher.send(zone.occupancy(0, false, 2, left)).await;
    publisher.send(zone.occupancy(1, false, 2, left)).await;

    let session = eventually(WAIT, "bay 0's stay priced", || async {
        platform
            .sessions(&zone.lot)
            .await
            .into_iter()
            .find(|s| s["status"] == "closed")
    })
    .await;
    assert_eq!(session["plate"], world.enrolled.as_str());
    assert_eq!(session["bay_id"], "b-00");
    assert_eq!(session["entry_gate"], Value::Null);
    let quote: Value = reqwest::get(platform.url(&format!(
        "/v1/lots/{}/quote?entered_at={}&exited_at={}&plate_color=blue",
        zone.lot,
        urlencode(&session["entered_at"]),
        urlencode(&session["exited_at"]),
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(session["fee"], quote["amount"], "fee = quote: {quote}");

    let review = eventually(WAIT, "bay 1's stay in review", || async {
        platform
            .admin_get(&format!("/v1/review?lot={}", zone.lot))
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "no_plate")
            .cloned()
    })
    .await;
    assert_eq!(review["bay_id"], "b-01");
    assert_eq!(review["plate"], Value::Null);
    // The operator reads the plate from the bay camera's images: the stay becomes the plate's
    // session, priced like any other (fee = quote).
    let (status, audited) = platform
        .call(
            Some(crate::support::ADMIN_KEY),
            reqwest::Method::POST,
            &format!("/v1/review/{}/resolve", review["id"].as_str().unwrap()),
            Some(&serde_json::json!({"action": "edit_plate", "plate": "浙N13579", "plate_color": "blue",
                                     "reason": "plate read from the bay camera's images"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{audited}");
    let corrected = platform
        .sessions(&zone.lot)
        .await
        .into_iter()
        .find(|s| s["plate"] == "浙N13579")
        .unwrap();
    assert_eq!(
        (&corrected["status"], &corrected["bay_id"]),
        (&Value::from("closed"), &Value::from("b-01"))
    );
    let quote: Value = reqwest::get(platform.url(&format!(
        "/v1/lots/{}/quote?entered_at={}&exited_at={}&plate_color=blue",
        zone.lot,
        urlencode(&corrected["entered_at"]),
        urlencode(&corrected["exited_at"]),
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(corrected["fee"], quote["amount"], "fee = quote: {quote}");

    // A car leaves and the next arrives at once (often in one round of writes): the first stay
    // closes before the second opens, and the database takes both.
    publisher.send(zone.occupancy(2, true, 1, arrived)).await;
    publisher.send(zone.occupancy(2, false, 2, left)).await;
    publisher.send(zone.occupancy(2, true, 3, left)).await;
    let bays = eventually(WAIT, "bay 2's second stay open", || async {
        let bays = platform
            .admin_get(&format!("/v1/lots/{}/bays", zone.lot))
            .await;
        (platform.metric("parkflow_bay_sessions_opened_total").await == 4.0
            && bays[2]["stay_started_at"].is_string())
        .then_some(bays)
    })
    .await;
    assert_eq!(bays[2]["state"], "occupied");

    // A pass holder's stay is free.
    publisher.send(zone.occupancy(3, true, 1, arrived)).await;
    eventually(WAIT, "bay 3's stay open", || async {
        let bays = platform
            .admin_get(&format!("/v1/lots/{}/bays", zone.lot))
            .await;
        bays[3]["stay_started_at"].is_string().then_some(())
    })
    .await;
    publisher
        .send(zone.plate(
            3,
            world.pass_holder.as_str(),
            0.9,
            arrived + chrono::Duration::seconds(5),
        ))
        .await;
    wait_plate(&platform, &zone, 3, 0.9).await;
    publisher.send(zone.occupancy(3, false, 2, left)).await;
    let free = eventually(WAIT, "the pass holder's stay closed", || async {
        platform
            .sessions(&zone.lot)
            .await
            .into_iter()
            .find(|s| s["plate"] == world.pass_holder.as_str() && s["status"] == "closed")
    })
    .await;
    assert_eq!(
        (free["fee"].as_str(), free["pass_holder"].as_bool()),
        (Some("0.00"), Some(true))
    );
    assert_eq!(
        platform.metric("parkflow_store_write_errors_total").await,
        0.0
    );
    drop(cameras);
    platform.stop().await;
}

/// Subscribes to `lots/{zone}/availability` and returns the first retained message with a car.
async fn retained_availability(platform: &TestPlatform, zone: &Zone) -> Value {
    let sensor = zone.sensors[5].0.as_str();
    let mut options = MqttOptions::new(sensor, &platform.mqtt.0, platform.mqtt.1);
    if platform.setup.broker == Broker::Embedded {
        options.set_credentials(sensor, mqtt_password(&zone.sensors[5].1));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let topic = Topic::LotAvailability {
        lot: zone.lot.clone(),
    }
    .to_string();
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(topic.as_str(), QoS::AtMostOnce)
                        .unwrap();
                }
                // Nothing changes after the subscription, so a message here was retained (rumqttd
                // does not set the retain flag on what it replays; Mosquitto does).
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    let value: Value = serde_json::from_slice(&p.payload).unwrap();
                    if value["occupied"] == 1 {
                        return value;
                    }
                    // An older count: look again once the platform has published the newer one.
                    client.try_unsubscribe(topic.as_str()).unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    client
                        .try_subscribe(topic.as_str(), QoS::AtMostOnce)
                        .unwrap();
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("a retained availability message")
}

/// Waits until bay `bay`'s open stay carries a plate read of `confidence`.
async fn wait_plate(platform: &TestPlatform, zone: &Zone, bay: usize, confidence: f64) {
    eventually(WAIT, "the plate attached to the stay", || async {
        let bays = platform
            .admin_get(&format!("/v1/lots/{}/bays", zone.lot))
            .await;
        (bays[bay]["stay_plate_confidence"].as_f64() == Some(confidence)).then_some(())
    })
    .await;
}

fn urlencode(value: &Value) -> String {
    value
        .as_str()
        .unwrap()
        .replace('+', "%2B")
        .replace(':', "%3A")
}

async fn gated_lots_count_entries_and_exits_and_take_an_operators_recount(setup: Setup) {
    let (world, _zone, platform, _publisher) = start(setup).await;
    let mut entry =
        crate::support::TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry)
            .await;
    let mut exit =
        crate::support::TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit)
            .await;
    assert_eq!(
        counts(&availability(&platform, &world.lot).await),
        (10, 10, 0, 0)
    );
    entry
        .decide(&entry.read(world.enrolled.as_str(), Direction::Entry))
        .await;
    wait_counts(&platform, &world.lot, (9, 1, 0), "one car in").await;

    let recount = reqwest::Client::new()
        .post(platform.url(&format!("/v1/lots/{}/recount", world.lot)))
        .bearer_auth(crate::support::ADMIN_KEY)
        .json(&serde_json::json!({ "occupied": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(recount.status(), 200);
    wait_counts(&platform, &world.lot, (3, 7, 0), "the recount taken").await;
    exit.decide(&exit.read(world.enrolled.as_str(), Direction::Exit))
        .await;
    wait_counts(
        &platform,
        &world.lot,
        (4, 6, 0),
        "the exit counted from the recount",
    )
    .await;

    let too_many = reqwest::Client::new()
        .post(platform.url(&format!("/v1/lots/{}/recount", world.lot)))
        .bearer_auth(crate::support::ADMIN_KEY)
        .json(&serde_json::json!({ "occupied": 11 }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422);
    let anonymous = reqwest::Client::new()
        .post(platform.url(&format!("/v1/lots/{}/recount", world.lot)))
        .json(&serde_json::json!({ "occupied": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    platform.stop().await;
}

async fn apps_find_lots_near_them_and_read_the_feeds_and_the_stream(setup: Setup) {
    let (world, zone, platform, publisher) = start(setup).await;
    // Connected before the change: receives it.
    let mut stream = reqwest::get(platform.url("/v1/availability/stream"))
        .await
        .unwrap();
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    publisher.send(zone.occupancy(3, true, 1, Utc::now())).await;
    let event = tokio::time::timeout(WAIT, async {
        let mut text = String::new();
        loop {
            let chunk = stream.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(data) = text
                .split("\n\n")
                .filter(|e| e.contains("event: availability"))
                .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
                .map(|d| serde_json::from_str::<Value>(d).unwrap())
                .find(|d| d["lot"] == zone.lot.as_str() && d["occupied"] == 1)
            {
                break data;
            }
        }
    })
    .await
    .expect("an availability event for the zone");
    assert_eq!(event["kind"], "on_street");
    assert!(
        !event.to_string().contains("浙"),
        "no plate in public events"
    );

    // Near the zone: the zone first, then the gated lot (about 1.4 km away).
    let near: Value =
        reqwest::get(platform.url("/v1/lots?near=30.2601,120.1601&radius_m=5000&limit=10"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let ids: Vec<&str> = near
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lot"].as_str().unwrap())
        .filter(|id| *id == zone.lot.as_str() || *id == world.lot.as_str())
        .collect();
    assert_eq!(ids, vec![zone.lot.as_str(), world.lot.as_str()]);
    let bad = reqwest::get(platform.url("/v1/lots?near=95,120&radius_m=100"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    let fiware = reqwest::get(platform.url("/v1/feeds/fiware"))
        .await
        .unwrap();
    assert_eq!(fiware.headers()["content-type"], "application/ld+json");
    let entities: Value = fiware.json().await.unwrap();
    let zone_entity = entities
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"].as_str().unwrap().ends_with(zone.lot.as_str()))
        .unwrap()
        .clone();
    assert_eq!(zone_entity["type"], "OnStreetParking");
    assert_eq!(zone_entity["occupiedSpotNumber"], 1);
    let datex = reqwest::get(platform.url("/v1/feeds/datex2"))
        .await
        .unwrap();
    assert!(
        datex.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/xml")
    );
    let xml = datex.text().await.unwrap();
    assert!(xml.contains(zone.lot.as_str()) && xml.contains("ParkingStatusPublication"));

    // The retained MQTT topic carries the zone's counts, to a subscriber that comes later.
    let retained = retained_availability(&platform, &zone).await;
    assert_eq!(retained["lot"], zone.lot.as_str());
    assert_eq!(
        (
            retained["total"].clone(),
            retained["occupied"].clone(),
            retained["unknown"].clone()
        ),
        (Value::from(6), Value::from(1), Value::from(5))
    );
    platform.stop().await;
}

async fn a_client_over_its_rate_is_told_to_slow_down(setup: Setup) {
    let (_world, zone, platform, _publisher) =
        start_with(setup, |config| config.public_rate_per_second = 20).await;
    let client = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..400 {
        let response = client
            .get(platform.url(&format!("/v1/lots/{}/availability", zone.lot)))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the limit reached within 400 quick requests");
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Operators' endpoints are not public reads and are not limited with them.
    let metrics = client
        .get(platform.url("/metrics"))
        .bearer_auth(crate::support::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    platform.stop().await;
}

macro_rules! scenarios {
    ($module:ident, $database:expr, $broker:expr) => {
        mod $module {
            use super::*;

            async fn run<F: std::future::Future<Output = ()>>(scenario: fn(Setup) -> F) {
                if let Some(setup) = Setup::available($database, $broker) {
                    scenario(setup).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events_apply_by_seq_and_repeats_and_bad_entries_change_nothing() {
                run(super::events_apply_by_seq_and_repeats_and_bad_entries_change_nothing).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_silent_sensor_turns_its_bay_unknown_and_availability_stays_consistent() {
                run(super::a_silent_sensor_turns_its_bay_unknown_and_availability_stays_consistent)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stay_with_a_plate_is_priced_and_one_without_goes_to_review() {
                run(super::a_stay_with_a_plate_is_priced_and_one_without_goes_to_review).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gated_lots_count_entries_and_exits_and_take_an_operators_recount() {
                run(super::gated_lots_count_entries_and_exits_and_take_an_operators_recount).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apps_find_lots_near_them_and_read_the_feeds_and_the_stream() {
                run(super::apps_find_lots_near_them_and_read_the_feeds_and_the_stream).await;
            }
        }
    };
}

scenarios!(sqlite_embedded, Database::Sqlite, Broker::Embedded);
scenarios!(postgres_embedded, Database::Postgres, Broker::Embedded);
scenarios!(sqlite_mosquitto, Database::Sqlite, Broker::Mosquitto);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_told_to_slow_down_sqlite_embedded() {
    if let Some(setup) = Setup::available(Database::Sqlite, Broker::Embedded) {
        a_client_over_its_rate_is_told_to_slow_down(setup).await;
    }
}
