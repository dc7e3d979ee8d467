//! Per-device permissions on Mosquitto's dynamic security (issue 13): the platform keeps the
//! broker's clients and roles in step with its registry, each device logs in as itself and may
//! speak and listen only for itself. These run against the dynsec Mosquitto `.ci/run` starts
//! (`PARKFLOW_TEST_DYNSEC_URL`); the attacks are sent as an opened-up device would send them.

use std::time::{Duration, Instant};

use crate::support::{
    ADMIN_KEY, Broker, Database, Setup, TestDevice, TestPlatform, World, admin_login,
};
use parkflow_gateway::registry::GateDirection;
use parkflow_protocol::sign::plain;
use parkflow_protocol::{DeviceId, Direction, GateAction, GateId, Topic};
use reqwest::{Method, StatusCode};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

fn dynsec() -> Option<Setup> {
    Setup::available(Database::Sqlite, Broker::MosquittoDynsec)
}

/// The broker's admin login (the platform's).
fn admin() -> (String, String) {
    let url = Broker::MosquittoDynsec.url().unwrap();
    let (user, password) = admin_login(&url).expect("the dynsec URL names its admin");
    (user, password.expose_secret().to_owned())
}

/// A bare MQTT client, as an attacker or an observer would hold one: it does not reconnect.
struct Raw {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subacks: mpsc::UnboundedReceiver<Vec<SubscribeReasonCode>>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    /// Logs in; `Err` with the broker's answer when it refuses.
    async fn connect(
        platform: &TestPlatform,
        client_id: &str,
        login: (&str, &str),
    ) -> Result<Self, String> {
        let mut options = MqttOptions::new(client_id, &platform.mqtt.0, platform.mqtt.1);
        options.set_credentials(login.0, login.1);
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let first = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
        match first {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack))))
                if ack.code == ConnectReturnCode::Success => {}
            other => return Err(format!("{other:?}")),
        }
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (subacks_tx, subacks) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = messages_tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let _ = subacks_tx.send(ack.return_codes);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        connected_tx.send_replace(false);
                        break;
                    }
                }
            }
        });
        Ok(Self {
            client,
            messages,
            subacks,
            connected,
            task,
        })
    }

    /// Whether the broker grants the subscription.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let codes = tokio::time::timeout(Duration::from_secs(5), self.subacks.recv())
            .await
            .expect("a SUBACK")
            .unwrap();
        codes
            .iter()
            .all(|code| !matches!(code, SubscribeReasonCode::Failure))
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Everything received so far.
    fn received(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut all = Vec::new();
        while let Ok(message) = self.messages.try_recv() {
            all.push(message);
        }
        all
    }

    /// Whether the broker closes the connection within `deadline`.
    async fn cut_within(&mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.connected.wait_for(|up| !*up))
            .await
            .is_ok()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The attack (issue 13): an opened-up bay sensor subscribes to everything to read every plate
/// and every barrier command, commands a gate, and speaks for a gate's camera. On the embedded
/// broker any of this works; on the dynsec Mosquitto none of it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_reads_no_other_device_and_commands_no_gate() {
    let Some(setup) = dynsec() else {
        return;
    };
    let mut world = World::new(setup, 100);
    let (street, sensor) = world.add_bay_sensor();
    let platform = TestPlatform::start(setup, &world).await;
    let (password, _) = world.device(&sensor);
    let mut spy = Raw::connect(&platform, sensor.as_str(), (sensor.as_str(), &password))
        .await
        .expect("the sensor logs in as itself");
    let command_topic = Topic::GateCommand {
        lot: world.lot.clone(),
        gate: world.entry.clone(),
    }
    .to_string();
    let plate_topic = Topic::GatePlate {
        lot: world.lot.clone(),
        gate: world.entry.clone(),
    }
    .to_string();
    for filter in [
        "#",
        "parkflow/v1/#",
        "$CONTROL/#",
        command_topic.as_str(),
        plate_topic.as_str(),
    ] {
        assert!(!spy.subscribe(filter).await, "{filter} granted to a sensor");
    }
    // What every device may read: availability.
    let availability = Topic::LotAvailability { lot: street }.to_string();
    assert!(spy.subscribe(&availability).await);
    assert!(spy.subscribe("parkflow/v1/lots/+/availability").await);

    // An observer with the platform's login sees everything that reaches the gate.
    let (user, admin_password) = admin();
    let observer_id = format!("observer-{}", Uuid::new_v4().simple());
    let mut observer = Raw::connect(&platform, &observer_id, (&user, &admin_password))
        .await
        .unwrap();
    assert!(observer.subscribe(&command_topic).await);

    // Cameras drive traffic.
    let mut entry = TestDevice::connect(&platform, &world, &world.entry_camera, &world.entry).await;
    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let read_in = entry.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(entry.decide(&read_in).await.action, GateAction::Open);
    let read_out = exit.read(world.enrolled.as_str(), Direction::Exit);
    assert_eq!(exit.decide(&read_out).await.action, GateAction::Open);

    // The sensor commands the entry gate, and speaks for its camera (the lot takes plain JSON
    // from whoever the broker lets publish there).
    let forged = format!(r#"{{"command_id":"{}","action":"open"}}"#, Uuid::new_v4()).into_bytes();
    spy.publish(&command_topic, forged.clone()).await;
    let impersonated = entry.read(world.unenrolled.as_str(), Direction::Entry);
    spy.publish(&plate_topic, plain(&entry.plate_topic(), &impersonated))
        .await;
    // A genuine read after them is answered (ingestion and the observer work).
    let after = entry.read(world.pass_holder.as_str(), Direction::Entry);
    assert_eq!(entry.decide(&after).await.action, GateAction::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seen = observer.received();
    assert!(seen.len() >= 2, "the observer saw the platform's commands");
    assert!(
        !seen.iter().any(|(_, payload)| *payload == forged),
        "the sensor's command reached the gate"
    );
    assert_eq!(
        entry.commands_seen_for(&impersonated.event_id),
        0,
        "the sensor spoke for the camera"
    );
    let heard = spy.received();
    assert!(
        heard
            .iter()
            .all(|(topic, _)| topic.ends_with("/availability")),
        "the sensor heard {:?}",
        heard.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    drop((entry, exit));
    platform.stop().await;
}

/// Revoking a camera disconnects it within 2 s, and it cannot log in again; the other camera
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_camera_is_disconnected_and_cannot_come_back() {
    let Some(setup) = dynsec() else {
        return;
    };
    let world = World::new(setup, 100);
    let platform = TestPlatform::start(setup, &world).await;
    let id = world.entry_camera.as_str();
    let (password, _) = world.device(&world.entry_camera);
    let mut camera = Raw::connect(&platform, id, (id, &password)).await.unwrap();

    let revoked = Instant::now();
    let (status, body) = platform
        .call_as(
            ADMIN_KEY,
            Method::DELETE,
            &format!("/v1/devices/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        camera
            .cut_within(Duration::from_secs(2).saturating_sub(revoked.elapsed()))
            .await,
        "a revoked camera still connected 2 s later"
    );
    assert!(Raw::connect(&platform, id, (id, &password)).await.is_err());

    let mut exit = TestDevice::connect(&platform, &world, &world.exit_camera, &world.exit).await;
    let read = exit.read(world.unenrolled.as_str(), Direction::Exit);
    exit.decide(&read).await;
    drop(exit);
    platform.stop().await;
}

/// A camera registered through the API works at once; rotating its credentials cuts the
/// connection made with the old ones, which no longer log in, and the new ones work at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_camera_works_at_once_and_a_rotated_secret_replaces_the_old() {
    let Some(setup) = dynsec() else {
        return;
    };
    let mut world = World::new(setup, 100);
    let gate = GateId::parse("in-2").unwrap();
    world.plan.lots[0]
        .gates
        .push((gate.clone(), GateDirection::Entry));
    let platform = TestPlatform::start(setup, &world).await;
    let id = DeviceId::parse(&format!("cam-new-{}", world.lot)).unwrap();
    let (status, created) = platform
        .call_as(
            ADMIN_KEY,
            Method::POST,
            &format!("/v1/lots/{}/devices", world.lot),
            Some(json!({"id": id.as_str(), "kind": "gate_camera", "gate": "in-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let old = created["mqtt_password"].as_str().unwrap().to_owned();
    world.secrets.push((
        id.clone(),
        old.clone(),
        created["secret"].as_str().unwrap().to_owned(),
    ));
    let mut camera = TestDevice::connect(&platform, &world, &id, &gate).await;
    let read = camera.read(world.enrolled.as_str(), Direction::Entry);
    assert_eq!(camera.decide(&read).await.action, GateAction::Open);
    drop(camera);

    let mut held = Raw::connect(&platform, id.as_str(), (id.as_str(), &old))
        .await
        .unwrap();
    let rotated_at = Instant::now();
    let (status, rotated) = platform
        .call_as(
            ADMIN_KEY,
            Method::POST,
            &format!("/v1/devices/{id}/rotate"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(
        held.cut_within(Duration::from_secs(2).saturating_sub(rotated_at.elapsed()))
            .await,
        "the old credentials' connection outlived the rotation"
    );
    assert!(
        Raw::connect(&platform, id.as_str(), (id.as_str(), &old))
            .await
            .is_err()
    );
    let new = rotated["mqtt_password"].as_str().unwrap().to_owned();
    for entry in &mut world.secrets {
        if entry.0 == id {
            entry.1.clone_from(&new);
            rotated["secret"].as_str().unwrap().clone_into(&mut entry.2);
        }
    }
    let mut camera = TestDevice::connect(&platform, &world, &id, &gate).await;
    let read = camera.read(world.unenrolled.as_str(), Direction::Entry);
    assert_eq!(camera.decide(&read).await.action, GateAction::Open);
    drop(camera);
    platform.stop().await;
}
